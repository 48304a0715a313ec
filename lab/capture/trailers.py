"""Timing-card trailers at the end of captured frames, decoded for a whole batch at once.

Layouts (from their public descriptions; no code taken from them):

- **expcap** (exact-capture's expcap.h / docs/expcap.md): a 16-byte footer that
  exact-capture appends to every record's captured bytes, little-endian and
  packed: seconds u32, picoseconds since that second u40, flags u8, device id
  u8, port id u8, then dropped-count u16 + reserved u16 (or, with the
  new-CRC flag, a new FCS u32).
- **metamako** (Arista/Metamako timestamp trailer, as Wireshark's metamako
  dissector reads it): appended to the frame on the wire, big-endian, read from
  the end: ... original FCS u32, [TLV extensions], seconds u32, nanoseconds
  u32, flags u8, device id u16, port id u8, [new FCS u32 if captured]. TLV
  extensions (e.g. sub-ns, sequence numbers) are not decoded.

The result is one row per packet of TRAILER_DTYPE. Picoseconds since the epoch
overflow int64 after 106 days, so the exact stamp is ts_ns * 1000 + sub_ns_ps
(ts_ns: int64 ns since the epoch, floor; sub_ns_ps: 0..999, always 0 for
metamako). Rows whose frame is too short, whose trailer was cut off by the
snaplen (metamako), or whose sub-second field is out of range have
valid=False and ts_ns=NO_TIMESTAMP.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from lab.capture.formats import NO_TIMESTAMP
from lab.capture.records import PacketBatch

EXPCAP_FOOTER = np.dtype([
    ("seconds", "<u4"), ("picoseconds_low", "<u4"), ("picoseconds_high", "u1"),
    ("flags", "u1"), ("device", "u1"), ("port", "u1"), ("dropped", "<u2"), ("reserved", "<u2"),
])
METAMAKO_TAIL = np.dtype([  # the last 12 bytes of the trailer
    ("seconds", ">u4"), ("nanoseconds", ">u4"), ("flags", "u1"), ("device", ">u2"), ("port", "u1"),
])
METAMAKO_ORIGINAL_FCS_BYTES = 4
assert EXPCAP_FOOTER.itemsize == 16 and METAMAKO_TAIL.itemsize == 12

TRAILER_DTYPE = np.dtype([
    ("valid", bool), ("ts_ns", np.int64), ("sub_ns_ps", np.uint16),
    ("device", np.uint16), ("port", np.uint8), ("flags", np.uint8),
])
KINDS = ("expcap", "metamako")
NS_PER_S = 1_000_000_000
PS_PER_S = 1_000_000_000_000


def decode_trailers(batch: PacketBatch, kind: str, fcs_bytes: int = 0) -> np.ndarray:
    """Decode the `kind` trailer ("expcap" or "metamako") of every packet in batch.

    fcs_bytes: 4 if the captured frames still end with the (new) Ethernet FCS
    after a metamako trailer, else 0. expcap footers are always the last bytes.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trailer kind {kind!r}; expected one of {', '.join(KINDS)}")
    layout = EXPCAP_FOOTER if kind == "expcap" else METAMAKO_TAIL
    end = batch.offset.astype(np.int64) + batch.caplen - (0 if kind == "expcap" else fcs_bytes)
    if kind == "expcap":
        fits = batch.caplen >= layout.itemsize
    else:  # the trailer is part of the wire frame: it must be captured whole
        fits = ((batch.caplen >= layout.itemsize + METAMAKO_ORIGINAL_FCS_BYTES + fcs_bytes)
                & (batch.caplen >= batch.wire_len))
    raw = _tails(batch.data, np.where(fits, end, layout.itemsize), layout)

    out = np.zeros(len(batch), TRAILER_DTYPE)
    seconds = raw["seconds"].astype(np.int64)
    if kind == "expcap":
        picoseconds = (raw["picoseconds_low"].astype(np.int64)
                       | raw["picoseconds_high"].astype(np.int64) << 32)
        valid = fits & (picoseconds < PS_PER_S)
        out["ts_ns"] = seconds * NS_PER_S + picoseconds // 1000
        out["sub_ns_ps"] = picoseconds % 1000
    else:
        nanoseconds = raw["nanoseconds"].astype(np.int64)
        valid = fits & (nanoseconds < NS_PER_S)
        out["ts_ns"] = seconds * NS_PER_S + nanoseconds
    out["device"], out["port"], out["flags"] = raw["device"], raw["port"], raw["flags"]
    out["valid"] = valid
    out["ts_ns"][~valid] = NO_TIMESTAMP
    out["sub_ns_ps"][~valid] = 0
    return out


def _tails(data: np.ndarray, end: np.ndarray, layout: np.dtype) -> np.ndarray:
    """The layout-sized bytes ending at each end, as records of layout."""
    if len(data) < layout.itemsize:  # nothing can fit; every row is invalid anyway
        return np.zeros(len(end), layout)
    index = (end - layout.itemsize)[:, None] + np.arange(layout.itemsize)
    return np.ascontiguousarray(data[index]).view(layout).reshape(len(end))


def trailer_bytes(kind: str) -> int:
    """Bytes a trailer adds after the original frame (expcap: footer; metamako: the
    original FCS it keeps plus its 12-byte tail)."""
    return EXPCAP_FOOTER.itemsize if kind == "expcap" else METAMAKO_ORIGINAL_FCS_BYTES + METAMAKO_TAIL.itemsize


def restamp_from_trailers(batch: PacketBatch, kind: str) -> PacketBatch:
    """The batch with the timing card's stamps instead of the capture's, and the trailer
    taken off caplen and wire_len so each frame is what crossed the wire. Frames without
    a valid trailer get NO_TIMESTAMP."""
    stamps = decode_trailers(batch, kind)
    valid = stamps["valid"]
    tail = trailer_bytes(kind)
    return replace(batch, ts_ns=np.where(valid, stamps["ts_ns"], NO_TIMESTAMP),
                   caplen=np.where(valid, batch.caplen - tail, batch.caplen).astype(batch.caplen.dtype),
                   wire_len=np.where(valid, batch.wire_len - tail, batch.wire_len).astype(batch.wire_len.dtype))
