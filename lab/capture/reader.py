"""Read pcap and pcapng files as columnar PacketBatches, in bounded chunks.

The file is memory-mapped; each batch's `data` is a view of the whole mapping
and `offset` points into it. The record walk is the C module lab.capture._walk;
this module reads file headers, SHBs and IDBs, and turns stops into Damage.

Fatal (CaptureError at open_capture): the file cannot be opened, is empty, has
an unknown magic, a truncated or invalid file header / first SHB, or an
unsupported pcap/pcapng version. Everything after a good start is Damage: the
packets before it are kept. An unknown link type is not an error here.

What is read follows libpcap (sf-pcap.c, sf-pcapng.c) and Wireshark: a pcap
record whose caplen is above the file's snaplen is a packet (its whole caplen is
kept, as Wireshark does; libpcap would cut it to the snaplen); only a caplen
above the link type's largest (formats.max_caplen, libpcap's
max_snaplen_for_dlt) is damage. pcap versions 2.x and 543.0 read, with the
record's two length fields swapped where libpcap swaps them (2.0-2.2, 543.0;
2.3 when caplen > len). A first SHB must be version 1.0 or 1.2 (libpcap and
Wireshark refuse 1.1 and 1.3+); a later SHB only major version 1 (libpcap).
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Iterator

import numpy as np

from lab.capture import _walk
from lab.capture.formats import (
    BYTE_ORDER_MAGIC, DEFAULT_TSRESOL, IDB_FIXED, IF_DESCRIPTION, IF_NAME, IF_TSOFFSET,
    IF_TSRESOL, INTERFACE_TABLE_DTYPE, NO_TIMESTAMP, OPTION_HEADER,
    PCAP_FILE_HEADER, PCAP_LINKTYPE_MASK, PCAP_LINKTYPE_RESERVED, PCAP_MAGICS, PCAP_VERSION_DGUX,
    SHB_FIXED, BLOCK_SHB, max_caplen, tsresol_text,
)
from lab.capture.records import CaptureError, Damage, Interface, PacketBatch

MAX_PCAP_CAPLEN = _walk.MAX_PCAP_CAPLEN  # libpcap's largest snaplen (most link types; see max_caplen)
# pcapng versions a first SHB may have (libpcap's and Wireshark's rule).
PCAPNG_VERSIONS = ((1, 0), (1, 2))

# Stops after which the walk cannot go on: the rest of the file is skipped.
TAIL_REASONS = {
    _walk.STOP_TRUNCATED_HEADER: "file ends inside a record header",
    _walk.STOP_TRUNCATED_RECORD: "file ends inside a record",
    _walk.STOP_CAPLEN_OVER_MAX: "caplen {caplen} > {limit} (largest pcap caplen for link type {linktype})",
    _walk.STOP_BAD_BLOCK_LENGTH: "bad block length {block_len} (must be >= 12 and a multiple of 4)",
    _walk.STOP_TRAILING_MISMATCH: "trailing block length {trailing} != leading {block_len}",
}
# Stops at one unusable pcapng block whose length is intact: skip it and go on.
BLOCK_REASONS = {
    _walk.STOP_BAD_PACKET_BLOCK: "packet block too short for its header or caplen",
    _walk.STOP_UNKNOWN_INTERFACE: "packet on an interface its section does not define or could not read",
    _walk.STOP_BAD_OPTIONS: "packet block options overrun the block",
}
UNREADABLE_IDB = "unreadable interface description block"


class _Damaged(Exception):
    """Internal: a header that cannot be used, with the reason."""


def open_capture(path) -> "Capture":
    """Open a pcap (any of the 4 magics) or pcapng file; CaptureError if it is unreadable."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CaptureError(f"{path}: empty file, not a capture")
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return Capture(path, mapping)
    except BaseException:
        mapping.close()
        raise


class Capture:
    """A capture file being read. `interfaces`, `damage`, `non_monotonic`,
    `missing_ts` and `position` describe the walk of the latest batches() call."""

    def __init__(self, path: str, mapping: mmap.mmap):
        self.path = path
        self.file_bytes = len(mapping)
        self._map = mapping
        self.interfaces: list[Interface] = []
        self.damage: list[Damage] = []
        self.non_monotonic = 0   # packets stamped earlier than the previous stamped packet (file order)
        self.missing_ts = 0      # packets with ts_ns == NO_TIMESTAMP
        self.position = 0        # bytes walked so far (for progress)
        if len(mapping) < 4:
            raise CaptureError(f"{path}: {len(mapping)} bytes, too short for a capture header")
        magic = int.from_bytes(mapping[:4], "little")
        if magic in PCAP_MAGICS:
            self.format = "pcap"
            self._open_pcap(*PCAP_MAGICS[magic])
        elif magic == BLOCK_SHB:
            self.format = "pcapng"
            try:
                self._read_shb(0, first=True)
            except _Damaged as exc:
                raise CaptureError(f"{path}: not a readable pcapng file: {exc}") from None
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng file (magic {mapping[:4].hex()})")
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            mapping.madvise(mmap.MADV_SEQUENTIAL)
        self._data = np.frombuffer(mapping, dtype=np.uint8)

    # --- public -------------------------------------------------------------

    def batches(self, max_packets: int = 1 << 20, release: bool = True) -> Iterator[PacketBatch]:
        """Walk the file from the start, yielding batches of at most max_packets packets.

        release=False: the mapped pages behind the walk are not released as it goes; the
        consumer calls release_before() when done with a batch (for a consumer that reads
        batches behind the walk, e.g. in another thread).
        """
        if max_packets < 1:
            raise ValueError("max_packets must be >= 1")
        if self._map is None:
            raise CaptureError(f"{self.path}: capture is closed")
        self.damage = []
        self.non_monotonic = self.missing_ts = self.position = 0
        self._last_ts = None
        self._released = 0
        walk = self._pcap_walk if self.format == "pcap" else self._pcapng_walk
        for batch in walk(max_packets):
            self._count_stamps(batch)
            yield batch
            if release:
                self.release_before(int(batch.offset[-1]))

    def read_all(self) -> PacketBatch:
        """Every packet in one batch (for small files)."""
        parts = list(self.batches())
        if len(parts) == 1:
            return parts[0]
        columns = {name: np.concatenate([np.zeros(0, dtype)] + [getattr(b, name) for b in parts])
                   for name, dtype in COLUMN_DTYPES.items()}
        return PacketBatch(data=self._data, **columns)

    def close(self) -> None:
        if self._map is None:
            return
        self._data = None
        try:
            self._map.close()
        except BufferError:
            pass  # batches still view the mapping; it is unmapped when the last one goes
        self._map = None

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- pcap ---------------------------------------------------------------

    def _open_pcap(self, order: str, nanosecond: bool) -> None:
        if self.file_bytes < PCAP_FILE_HEADER.itemsize:
            raise CaptureError(f"{self.path}: truncated pcap header "
                               f"({self.file_bytes} of {PCAP_FILE_HEADER.itemsize} bytes)")
        header = self._record(0, PCAP_FILE_HEADER.newbyteorder(order))
        version = (int(header["version_major"]), int(header["version_minor"]))
        if version[0] != 2 and version != PCAP_VERSION_DGUX:
            raise CaptureError(f"{self.path}: unsupported pcap version {version[0]}.{version[1]}")
        network = int(header["network"])
        if network & PCAP_LINKTYPE_RESERVED:
            raise CaptureError(f"{self.path}: pcap link-type field {network:#010x} has reserved bits "
                               f"set ({network & PCAP_LINKTYPE_RESERVED:#010x})")
        linktype = network & PCAP_LINKTYPE_MASK
        snaplen = int(header["snaplen"])
        self._pcap_swapped = order != "<"
        self._pcap_nanosecond = nanosecond
        # Not the snaplen: libpcap and Wireshark read a record with caplen > snaplen.
        self._pcap_max_caplen = max_caplen(linktype)
        if version == PCAP_VERSION_DGUX or version[1] < 3:
            self._pcap_lengths = _walk.PCAP_LENGTHS_SWAPPED
        elif version[1] == 3:
            self._pcap_lengths = _walk.PCAP_LENGTHS_MAYBE_SWAPPED
        else:
            self._pcap_lengths = _walk.PCAP_LENGTHS_NORMAL
        self.interfaces = [Interface(linktype=linktype, tsresol="1e-9" if nanosecond else "1e-6",
                                     snaplen=snaplen)]

    def _pcap_walk(self, max_packets: int) -> Iterator[PacketBatch]:
        offset = PCAP_FILE_HEADER.itemsize
        while True:
            columns = _new_columns(self.file_bytes - offset, max_packets)
            count, offset, stop = _walk.walk_pcap(
                self._map, offset, self._pcap_swapped, self._pcap_nanosecond,
                self._pcap_max_caplen, self._pcap_lengths, columns["offset"], columns["caplen"],
                columns["wire_len"], columns["ts_ns"], 0, len(columns["offset"]))
            self.position = offset
            if count:
                yield self._batch(columns, count)
            if stop == _walk.STOP_FULL:
                continue
            if stop != _walk.STOP_END:
                self._damage_tail(stop, offset, "<>"[self._pcap_swapped])
            return

    # --- pcapng -------------------------------------------------------------

    def _pcapng_walk(self, max_packets: int) -> Iterator[PacketBatch]:
        self.interfaces = []
        order, table = "<", np.zeros(0, INTERFACE_TABLE_DTYPE)
        offset, count, columns = 0, 0, None
        while True:
            if columns is None:
                columns, count = _new_columns(self.file_bytes - offset, max_packets), 0
            count, offset, stop, block_len = _walk.walk_pcapng(
                self._map, offset, order == ">", table, columns["offset"], columns["caplen"],
                columns["wire_len"], columns["ts_ns"], columns["interface"],
                columns["direction"], count, len(columns["offset"]))
            self.position = offset
            if stop == _walk.STOP_FULL:
                yield self._batch(columns, count)
                columns = None
            elif stop == _walk.STOP_SECTION:
                try:
                    order, block_len = self._read_shb(offset)
                except _Damaged as exc:
                    self._add_damage(f"bad section header: {exc}", offset,
                                     self.file_bytes - offset, 1)
                    break
                table = np.zeros(0, INTERFACE_TABLE_DTYPE)
                offset += block_len
            elif stop == _walk.STOP_INTERFACE:
                table = np.append(table, self._read_idb(offset, block_len, order))
                offset += block_len
            elif stop in BLOCK_REASONS:
                self._add_damage(BLOCK_REASONS[stop], offset, block_len, 1)
                offset += block_len
            else:
                if stop != _walk.STOP_END:
                    self._damage_tail(stop, offset, order)
                break
        self.position = offset
        if count:
            yield self._batch(columns, count)

    def _read_shb(self, offset: int, first: bool = False) -> tuple[str, int]:
        """Byte order and length of the SHB at offset; _Damaged if unusable. The first
        SHB must be version 1.0 or 1.2, a later one only major version 1 (libpcap)."""
        left = self.file_bytes - offset
        if left < 12:
            raise _Damaged(f"file ends inside a section header ({left} bytes left)")
        magic = self._map[offset + 8:offset + 12]
        order = next((o for o in "<>" if int.from_bytes(magic, "little" if o == "<" else "big")
                      == BYTE_ORDER_MAGIC), None)
        if order is None:
            raise _Damaged(f"bad byte-order magic {magic.hex()}")
        block_len = self._u32(offset + 4, order)
        if block_len < SHB_FIXED.itemsize or block_len % 4:
            raise _Damaged(f"bad block length {block_len}")
        if block_len > left:
            raise _Damaged(f"file ends inside the section header block ({left} of {block_len} bytes)")
        trailing = self._u32(offset + block_len - 4, order)
        if trailing != block_len:
            raise _Damaged(f"trailing block length {trailing} != leading {block_len}")
        shb = self._record(offset, SHB_FIXED.newbyteorder(order))
        version = (int(shb["version_major"]), int(shb["version_minor"]))
        if version[0] != 1 or (first and version not in PCAPNG_VERSIONS):
            raise _Damaged(f"unsupported pcapng version {version[0]}.{version[1]}")
        return order, block_len

    def _read_idb(self, offset: int, block_len: int, order: str) -> np.ndarray:
        """The interface-table row for the IDB at offset; appends to self.interfaces."""
        row = np.zeros(1, INTERFACE_TABLE_DTYPE)
        row["global_index"] = _walk.UNUSABLE_INTERFACE
        if block_len < IDB_FIXED.itemsize + 4:
            self._add_damage(UNREADABLE_IDB, offset, block_len, 1)
            return row
        idb = self._record(offset, IDB_FIXED.newbyteorder(order))
        try:
            options = _read_options(self._map[offset + IDB_FIXED.itemsize:offset + block_len - 4], order)
            pow2, exponent = False, DEFAULT_TSRESOL
            if IF_TSRESOL in options:
                (value,) = _exactly(options[IF_TSRESOL], 1)
                pow2, exponent = bool(value & 0x80), value & 0x7F
            tsoffset_s = 0
            if IF_TSOFFSET in options:
                (tsoffset_s,) = struct.unpack(order + "q", _exactly(options[IF_TSOFFSET], 8))
        except _Damaged:
            self._add_damage(UNREADABLE_IDB, offset, block_len, 1)
            return row
        if len(self.interfaces) >= _walk.UNUSABLE_INTERFACE:
            self._add_damage("more interfaces than the reader supports", offset, block_len, 1)
            return row
        row["global_index"] = len(self.interfaces)
        row["snaplen"], row["pow2"], row["exponent"], row["tsoffset_s"] = (
            idb["snaplen"], pow2, exponent, tsoffset_s)
        self.interfaces.append(Interface(
            linktype=int(idb["linktype"]), tsresol=tsresol_text(pow2, exponent),
            snaplen=int(idb["snaplen"]), name=_text(options.get(IF_NAME)),
            description=_text(options.get(IF_DESCRIPTION)), tsoffset_s=tsoffset_s))
        return row

    # --- shared -------------------------------------------------------------

    def _batch(self, columns: dict, count: int) -> PacketBatch:
        capacity = len(columns["offset"])
        keep = {name: (col[:count].copy() if count < capacity // 2 else col[:count])
                for name, col in columns.items()}
        return PacketBatch(data=self._data, **keep)

    def _count_stamps(self, batch: PacketBatch) -> None:
        missing = int(np.count_nonzero(batch.ts_ns == NO_TIMESTAMP))
        stamps = batch.ts_ns[batch.ts_ns != NO_TIMESTAMP] if missing else batch.ts_ns   # no copy when all stamped
        self.missing_ts += missing
        if len(stamps):
            self.non_monotonic += int(np.count_nonzero(stamps[1:] < stamps[:-1]))
            if self._last_ts is not None and stamps[0] < self._last_ts:
                self.non_monotonic += 1
            self._last_ts = int(stamps[-1])

    def release_before(self, offset: int) -> None:
        """Drop mapped pages the walk has passed, so memory stays bounded on
        files larger than RAM. The mapping is read-only and file-backed: a later
        access to those bytes simply faults them in again."""
        end = offset - offset % mmap.PAGESIZE
        if self._map is not None and end > self._released and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    def _damage_tail(self, stop: int, offset: int, order: str) -> None:
        """Damage from offset to the end of the file; the reason quotes the bad fields."""
        values = {}
        if stop == _walk.STOP_CAPLEN_OVER_MAX:
            caplen, wire_len = self._u32(offset + 8, order), self._u32(offset + 12, order)
            if self._pcap_lengths == _walk.PCAP_LENGTHS_SWAPPED or (
                    self._pcap_lengths == _walk.PCAP_LENGTHS_MAYBE_SWAPPED and caplen > wire_len):
                caplen = wire_len
            values = {"caplen": caplen, "limit": self._pcap_max_caplen,
                      "linktype": self.interfaces[0].linktype}
        elif stop in (_walk.STOP_BAD_BLOCK_LENGTH, _walk.STOP_TRAILING_MISMATCH):
            values = {"block_len": self._u32(offset + 4, order)}
            if stop == _walk.STOP_TRAILING_MISMATCH:
                values["trailing"] = self._u32(offset + values["block_len"] - 4, order)
        self._add_damage(TAIL_REASONS[stop].format(**values), offset, self.file_bytes - offset, 1)

    def _add_damage(self, reason: str, offset: int, nbytes: int, records: int) -> None:
        for damage in self.damage:
            if damage.reason == reason:
                damage.bytes_skipped += nbytes
                damage.records_skipped += records
                return
        self.damage.append(Damage(reason, offset, nbytes, records))

    def _record(self, offset: int, layout: np.dtype) -> np.void:
        """One header of layout at offset, copied out (a view would pin the mapping open)."""
        return np.frombuffer(self._map[offset:offset + layout.itemsize], layout)[0]

    def _u32(self, offset: int, order: str) -> int:
        return struct.unpack_from(order + "I", self._map, offset)[0]


COLUMN_DTYPES = {
    "offset": np.int64, "caplen": np.uint32, "wire_len": np.uint32, "ts_ns": np.int64,
    "interface": np.uint16, "direction": np.int8,
}
MIN_RECORD_BYTES = 16  # pcap record header; pcapng SPB


def _new_columns(bytes_left: int, max_packets: int) -> dict[str, np.ndarray]:
    rows = max(1, min(max_packets, bytes_left // MIN_RECORD_BYTES + 1))
    return {name: np.zeros(rows, dtype) for name, dtype in COLUMN_DTYPES.items()}


def _read_options(body: bytes, order: str) -> dict[int, bytes]:
    """pcapng options (first value of each code); _Damaged if one overruns."""
    options: dict[int, bytes] = {}
    header = OPTION_HEADER.newbyteorder(order)
    pos = 0
    while len(body) - pos >= header.itemsize:
        code, length = (int(v) for v in np.frombuffer(body, header, count=1, offset=pos)[0])
        if code == 0:
            break
        start = pos + header.itemsize
        if start + length > len(body):
            raise _Damaged("option overruns its block")
        options.setdefault(code, body[start:start + length])
        pos = start + (length + 3) // 4 * 4
    return options


def _exactly(value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise _Damaged(f"option of {len(value)} bytes, expected {size}")
    return value


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.rstrip(b"\0").decode("utf-8", "replace")
