"""Capture I/O: read pcap/pcapng as columnar batches (one file, or many as one: archive), write
pcap/pcapng, decode timing-card trailers.

See docs/captures.md for formats, timestamp handling and damage reporting.
"""
from lab.capture.archive import CaptureSet, open_captures
from lab.capture.formats import LINKTYPE_NAMES, NO_TIMESTAMP
from lab.capture.reader import Capture, open_capture
from lab.capture.records import CaptureError, Damage, Interface, PacketBatch
from lab.capture.writer import PcapngWriter, PcapWriter

__all__ = [
    "Capture", "CaptureError", "CaptureSet", "Damage", "Interface", "LINKTYPE_NAMES", "NO_TIMESTAMP",
    "PacketBatch", "PcapWriter", "PcapngWriter", "open_capture", "open_captures",
]
