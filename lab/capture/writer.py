"""Write nanosecond pcap and pcapng (if_tsresol=9, one IDB per tap), little-endian.

Records are assembled with numpy, a chunk of packets at a time: headers are
rows of a structured dtype scattered to their record starts, and the frame
bytes, back to back, fill the gaps between them through a boolean mask.
Frames longer than the snaplen are truncated (caplen = snaplen, wire_len keeps
the full length), as a capture would.
Files are created owner-only (0o600).
"""
from __future__ import annotations

import os
import struct
from typing import Sequence

import numpy as np

from lab.capture.formats import (
    BLOCK_EPB, BLOCK_IDB, BLOCK_SHB, BYTE_ORDER_MAGIC, EPB_FIXED, EPB_FLAGS, IF_DESCRIPTION,
    IF_NAME, IF_TSOFFSET, IF_TSRESOL, OPT_COMMENT, OPT_ENDOFOPT, PCAP_FILE_HEADER, PCAP_NANOSECOND_MAGIC,
    PCAP_RECORD_HEADER, SHB_USERAPPL,
)
from lab.capture.records import CaptureError, Interface, PacketBatch
from lab.capture.reader import MAX_PCAP_CAPLEN

NS_PER_S = 1_000_000_000
CHUNK_BYTES = 4 << 20      # frame bytes assembled per numpy pass (bounds temporaries)
PCAP_RECORD = PCAP_RECORD_HEADER.newbyteorder("<")
EPB_HEAD = EPB_FIXED.newbyteorder("<")
EPB_FLAGS_OPTION = np.dtype([("code", "<u2"), ("length", "<u2"), ("flags", "<u4")])
END_OF_OPTIONS_BYTES = 4
# Bounds that keep ts_ns - if_tsoffset inside int64 (2^62 ns is the year 2116).
MAX_PCAPNG_TS_NS = 1 << 62
MAX_TSOFFSET_S = 1 << 32
BLOCK_TRAILER_BYTES = 4

Frames = Sequence[bytes] | PacketBatch


def _create_owner_only(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode under O_CREAT
    return os.fdopen(fd, "wb", buffering=1 << 20)


class _Writer:
    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = _create_owner_only(self.path)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_chunks(self, frame_bytes: np.ndarray, encode) -> None:
        """Call encode(start, stop) on runs of packets of about CHUNK_BYTES and write the results."""
        ends = np.cumsum(frame_bytes)
        start = 0
        while start < len(frame_bytes):
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + CHUNK_BYTES, side="right")))
            self._file.write(encode(start, stop).data)
            start = stop


class PcapWriter(_Writer):
    """pcap with the nanosecond magic (a1b23c4d), one link type for the file."""

    def __init__(self, path, linktype: int = 1, snaplen: int = MAX_PCAP_CAPLEN):
        super().__init__(path)
        self.snaplen = snaplen
        # as lab.capture reads it: 0 means the largest caplen pcap allows
        self._caplen_limit = min(snaplen, MAX_PCAP_CAPLEN) if snaplen > 0 else MAX_PCAP_CAPLEN
        header = np.zeros(1, PCAP_FILE_HEADER.newbyteorder("<"))
        header[0] = (PCAP_NANOSECOND_MAGIC, 2, 4, 0, 0, snaplen, linktype)
        self._file.write(header.tobytes())

    def write(self, ts_ns: int, frame: bytes) -> None:
        self.write_batch(np.array([ts_ns], np.int64), [frame])

    def write_batch(self, ts_ns, frames: Frames) -> None:
        ts_ns = np.asarray(ts_ns, dtype=np.int64)
        data, src, length, wire_len = _frame_columns(frames, len(ts_ns))
        if len(ts_ns) and (ts_ns.min() < 0 or ts_ns.max() >= (1 << 32) * NS_PER_S):
            raise CaptureError(f"{self.path}: a timestamp is outside what pcap can hold "
                               "(0 to 2^32 s after the epoch)")
        caplen = np.minimum(length, self._caplen_limit)
        size = PCAP_RECORD.itemsize + caplen

        def encode(a: int, b: int) -> np.ndarray:
            header = np.zeros(b - a, PCAP_RECORD)
            header["ts_sec"], header["ts_frac"] = np.divmod(ts_ns[a:b], NS_PER_S)
            header["caplen"], header["wire_len"] = caplen[a:b], wire_len[a:b]
            out, starts = _blank_records(size[a:b])
            _put_rows(out, starts, header)
            back_to_back = _gather(data, src[a:b], caplen[a:b])
            _put_frames(out, starts + PCAP_RECORD.itemsize, back_to_back, caplen[a:b])
            return out

        self._write_chunks(caplen, encode)


class PcapngWriter(_Writer):
    """pcapng: one SHB, one IDB per interface (a tap point) with if_tsresol=9,
    if_name and if_description as given, then EPBs (epb_flags when a direction
    is given). Interface.tsresol is ignored: stamps are always written in ns;
    a nonzero Interface.tsoffset_s is written as if_tsoffset and taken off.
    `comment` becomes the SHB's opt_comment (lab run keeps its run info there)."""

    def __init__(self, path, interfaces: list[Interface], comment: str | None = None):
        if not interfaces:
            raise CaptureError(f"{os.fspath(path)}: a pcapng file needs at least one interface")
        if any(abs(i.tsoffset_s) > MAX_TSOFFSET_S for i in interfaces):
            raise CaptureError(f"{os.fspath(path)}: if_tsoffset beyond +-2^32 s")
        super().__init__(path)
        self.interfaces = list(interfaces)
        self._snaplen = np.array([i.snaplen or np.iinfo(np.uint32).max for i in interfaces], np.int64)
        self._tsoffset_ns = np.array([i.tsoffset_s * NS_PER_S for i in interfaces], np.int64)
        options = [(SHB_USERAPPL, b"wirelab")] + ([(OPT_COMMENT, comment.encode())] if comment else [])
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(options)
        self._file.write(_block(BLOCK_SHB, shb))
        for itf in interfaces:
            options = [(IF_NAME, itf.name), (IF_DESCRIPTION, itf.description)]
            options = [(code, text.encode()) for code, text in options if text is not None]
            options.append((IF_TSRESOL, bytes([9])))
            if itf.tsoffset_s:
                options.append((IF_TSOFFSET, struct.pack("<q", itf.tsoffset_s)))
            body = struct.pack("<HHI", itf.linktype, 0, itf.snaplen) + _options(options)
            self._file.write(_block(BLOCK_IDB, body))

    def write(self, interface_index: int, ts_ns: int, frame: bytes, direction: int = 0) -> None:
        self.write_batch(interface_index, np.array([ts_ns], np.int64), [frame], direction)

    def write_batch(self, interface_index, ts_ns, frames: Frames, direction=0) -> None:
        """interface_index and direction: one value for all packets, or one per packet."""
        ts_ns = np.asarray(ts_ns, dtype=np.int64)
        count = len(ts_ns)
        iface = np.broadcast_to(np.asarray(interface_index, dtype=np.int64), (count,))
        direction = np.broadcast_to(np.asarray(direction, dtype=np.int64), (count,))
        data, src, length, wire_len = _frame_columns(frames, count)
        if count and (iface.min() < 0 or iface.max() >= len(self.interfaces)):
            raise CaptureError(f"{self.path}: interface index outside 0..{len(self.interfaces) - 1}")
        if count and (direction.min() < 0 or direction.max() > 2):
            raise CaptureError(f"{self.path}: direction must be 0 (unknown), 1 (in) or 2 (out)")
        if count and (ts_ns.min() < 0 or ts_ns.max() >= MAX_PCAPNG_TS_NS):
            raise CaptureError(f"{self.path}: a timestamp is outside 0 .. 2^62 ns after the epoch")
        units = ts_ns - self._tsoffset_ns[iface]
        if count and units.min() < 0:
            raise CaptureError(f"{self.path}: a timestamp is before its interface's if_tsoffset")
        units = units.astype(np.uint64)
        caplen = np.minimum(length, self._snaplen[iface])
        padded = (caplen + 3) // 4 * 4
        has_flags = direction != 0
        size = (EPB_HEAD.itemsize + padded + BLOCK_TRAILER_BYTES
                + has_flags * (EPB_FLAGS_OPTION.itemsize + END_OF_OPTIONS_BYTES))

        def encode(a: int, b: int) -> np.ndarray:
            head = np.zeros(b - a, EPB_HEAD)
            head["block_type"], head["block_len"], head["interface"] = BLOCK_EPB, size[a:b], iface[a:b]
            head["ts_high"], head["ts_low"] = units[a:b] >> np.uint64(32), units[a:b] & np.uint64(0xFFFFFFFF)
            head["caplen"], head["wire_len"] = caplen[a:b], wire_len[a:b]
            out, starts = _blank_records(size[a:b])
            _put_rows(out, starts, head)
            back_to_back = _gather(data, src[a:b], caplen[a:b])
            _put_frames(out, starts + EPB_HEAD.itemsize, back_to_back, caplen[a:b])
            flagged = np.flatnonzero(has_flags[a:b])
            flags = np.zeros(len(flagged), EPB_FLAGS_OPTION)
            flags["code"], flags["length"], flags["flags"] = EPB_FLAGS, 4, direction[a:b][flagged]
            _put_rows(out, starts[flagged] + EPB_HEAD.itemsize + padded[a:b][flagged], flags)
            ends = starts + size[a:b]
            _put_rows(out, ends - BLOCK_TRAILER_BYTES, size[a:b].astype("<u4"))
            return out

        self._write_chunks(caplen, encode)


def _frame_columns(frames: Frames, count: int):
    """(data, offset, length, wire_len) int64 columns of frames given as a batch or byte strings."""
    if isinstance(frames, PacketBatch):
        columns = (frames.data, frames.offset.astype(np.int64), frames.caplen.astype(np.int64),
                   frames.wire_len.astype(np.int64))
    else:
        length = np.fromiter(map(len, frames), np.int64, count=len(frames))
        data = np.frombuffer(b"".join(frames), np.uint8)
        columns = (data, np.cumsum(length) - length, length, length)
    if len(columns[1]) != count:
        raise ValueError(f"{len(columns[1])} frames for {count} timestamps")
    return columns


def _blank_records(size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum(size)
    return np.zeros(int(ends[-1]) if len(ends) else 0, np.uint8), ends - size


def _put_rows(out: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
    """Scatter fixed-size rows (a structured or scalar array) to out[starts[i]:]."""
    if len(rows) == 0:
        return
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
    out[(starts[:, None] + np.arange(raw.shape[1])).ravel()] = raw.ravel()


def _gather(data: np.ndarray, src: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The bytes data[src[i] : src[i] + length[i]] of all i, back to back."""
    total = int(length.sum())
    if total == 0 or np.array_equal(src[1:], src[:-1] + length[:-1]):
        start = int(src[0]) if len(src) else 0
        return data[start:start + total]  # already back to back (frames given as a list)
    first = np.cumsum(length) - length
    return data[np.arange(total, dtype=np.int64) + np.repeat(src - first, length)]


def _put_frames(out: np.ndarray, starts: np.ndarray, frames: np.ndarray, length: np.ndarray) -> None:
    """Place back-to-back frame bytes at out[starts[i] : starts[i] + length[i]] (ascending,
    non-overlapping ranges) through a boolean mask of alternating gap / frame runs."""
    ends = starts + length
    runs = np.empty(2 * len(starts) + 1, np.int64)
    runs[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))  # gap before each frame
    runs[1::2] = length
    runs[-1] = len(out) - (ends[-1] if len(ends) else 0)
    in_frame = np.zeros(len(runs), bool)
    in_frame[1::2] = True
    out[np.repeat(in_frame, runs)] = frames


def _options(options: list[tuple[int, bytes]]) -> bytes:
    encoded = b"".join(struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)
                       for code, value in options)
    return encoded + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)
