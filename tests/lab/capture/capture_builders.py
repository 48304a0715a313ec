"""Byte-level builders for pcap and pcapng files, written from the format specs
(struct, not lab.capture), so tests have an independent source of truth."""
from __future__ import annotations

import struct

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def pcap_header(order="<", nanosecond=False, snaplen=65535, linktype=1, major=2, minor=4) -> bytes:
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    return struct.pack(order + "IHHiIII", magic, major, minor, 0, 0, snaplen, linktype)


def pcap_record(order, seconds, fraction, frame: bytes, wire_len=None, caplen=None) -> bytes:
    caplen = len(frame) if caplen is None else caplen
    wire_len = len(frame) if wire_len is None else wire_len
    return struct.pack(order + "IIII", seconds, fraction, caplen, wire_len) + frame


def pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def option(order, code, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def options(order, *encoded: bytes) -> bytes:
    return b"".join(encoded) + struct.pack(order + "HH", 0, 0) if encoded else b""


def block(order, block_type, body: bytes, length=None, trailing=None) -> bytes:
    body = pad4(body)
    length = 12 + len(body) if length is None else length
    trailing = length if trailing is None else trailing
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", trailing)


def shb(order="<", major=1, minor=0) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, major, minor, -1))


def idb(order="<", linktype=1, snaplen=0, name=None, tsresol=None, tsoffset=None,
        description=None) -> bytes:
    opts = []
    if name is not None:
        opts.append(option(order, 2, name.encode()))
    if description is not None:
        opts.append(option(order, 3, description.encode()))
    if tsresol is not None:
        opts.append(option(order, 9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append(option(order, 14, struct.pack(order + "q", tsoffset)))
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options(order, *opts))


def epb(order, interface, units, frame: bytes, wire_len=None, flags=None, caplen=None) -> bytes:
    wire_len = len(frame) if wire_len is None else wire_len
    caplen = len(frame) if caplen is None else caplen
    opts = options(order, option(order, 2, struct.pack(order + "I", flags))) if flags is not None else b""
    head = struct.pack(order + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, caplen, wire_len)
    return block(order, 6, head + pad4(frame) + opts)


def pb(order, interface, units, frame: bytes, flags=None) -> bytes:
    """Obsolete Packet Block: u16 interface, u16 drops, then as EPB."""
    opts = options(order, option(order, 2, struct.pack(order + "I", flags))) if flags is not None else b""
    head = struct.pack(order + "HHIIII", interface, 0, units >> 32, units & 0xFFFFFFFF,
                       len(frame), len(frame))
    return block(order, 2, head + pad4(frame) + opts)


def spb(order, frame: bytes, wire_len=None) -> bytes:
    wire_len = len(frame) if wire_len is None else wire_len
    return block(order, 3, struct.pack(order + "I", wire_len) + pad4(frame))


def frame(i: int, size: int = 60) -> bytes:
    """A distinct frame per i."""
    return bytes((i + k) % 256 for k in range(size))
