"""The nouns of lab.capture: interfaces, columnar packet batches, damage reports."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.capture.formats import NO_TIMESTAMP
from lab.errors import LabError


class CaptureError(LabError):
    """A capture file that cannot be read (or written) at all; the message is one line naming the file."""


INBOUND, OUTBOUND = 1, 2        # packet direction, as pcapng's epb_flags code it (0: unknown)


@dataclass
class Interface:
    """One per pcap file, one per pcapng IDB."""

    linktype: int       # LINKTYPE_* number
    tsresol: str        # "1e-9", "1e-6", "2^-20"
    snaplen: int        # 0: no limit (pcapng)
    name: str | None = None
    description: str | None = None
    tsoffset_s: int = 0


@dataclass
class PacketBatch:
    """Columnar packets: row i is captured at data[offset[i] : offset[i] + caplen[i]].

    ts_ns is NO_TIMESTAMP for a packet without a timestamp (a pcapng SPB) or with
    one that does not fit int64 ns; `has_ts` tells them apart.
    """

    data: np.ndarray        # uint8; for files read, a view of the whole mapped file
    offset: np.ndarray      # int64
    caplen: np.ndarray      # uint32
    wire_len: np.ndarray    # uint32
    ts_ns: np.ndarray       # int64 ns since the Unix epoch, if_tsoffset applied
    interface: np.ndarray   # uint16, index into Capture.interfaces
    direction: np.ndarray   # int8: 0 unknown, 1 inbound, 2 outbound

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def has_ts(self) -> np.ndarray:
        return self.ts_ns != NO_TIMESTAMP

    def frame(self, i: int) -> bytes:
        """The captured bytes of packet i (for tests and small tools, not a hot path)."""
        start = int(self.offset[i])
        return self.data[start:start + int(self.caplen[i])].tobytes()


@dataclass
class Damage:
    """What could not be read.

    A damaged tail: at_offset is where framing was lost, bytes_skipped runs to the
    end of the file, records_skipped is 1 (the record whose header failed; what
    follows cannot be counted). A damaged pcapng block whose length is intact
    is skipped alone; repeats of the same reason merge into one entry that keeps
    the first offset and sums bytes and records.
    """

    reason: str
    at_offset: int
    bytes_skipped: int
    records_skipped: int


def skipped_report(damage: list[Damage]) -> dict:
    """The JSON `skipped` object: how many bytes and records were skipped, and why."""
    return {
        "bytes": sum(d.bytes_skipped for d in damage),
        "records": sum(d.records_skipped for d in damage),
        "reasons": [{"reason": d.reason, "at_offset": d.at_offset, "bytes": d.bytes_skipped,
                     "records": d.records_skipped} for d in damage],
    }
