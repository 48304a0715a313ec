"""Columnar decode of captured packets: link layer, IPv4, TCP and UDP headers.

A PacketBatch goes in; a PacketTable (one numpy column per field, one row per
packet) comes out, filled by one pass of the C kernel lab/analysis/_kernels.c
(see there why it is C). Every read is guarded by caplen; a packet that is not
IPv4, is cut short, or is an IP fragment is flagged in `status`, never trusted.

Link types: Ethernet (1, with up to two 802.1Q/802.1ad tags), Linux cooked
SLL (113) and SLL2 (276), raw IP (101, version checked) and raw IPv4 (228), and
BSD loopback/null (0, address family in either byte order).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from engine.protocol.registry import DEFAULT_MD, md_protocol
from lab.analysis import _kernels

# --- status of a decoded row ------------------------------------------------
OK = 0                    # IPv4 headers decoded (payload may still be cut short: see payload_caplen)
NOT_IPV4 = 1              # the link layer carries something else (ARP, IPv6, ...)
TRUNCATED = 2             # caplen ends inside the link, IPv4, TCP or UDP header
UNSUPPORTED_LINKTYPE = 3  # the interface's link type is not one decode() knows
BAD_IPV4 = 4              # IPv4 header lengths that cannot be right
IP_FRAGMENT = 5           # part of a fragmented datagram: its L4 header is not (all) here

STATUS_NAMES = {
    OK: "ok",
    NOT_IPV4: "not IPv4",
    TRUNCATED: "truncated header",
    UNSUPPORTED_LINKTYPE: "unsupported link type",
    BAD_IPV4: "bad IPv4 header",
    IP_FRAGMENT: "IP fragment",
}

PROTO_TCP = 6
PROTO_UDP = 17

# TCP flag bits (tcp_flags column)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# Link types the kernel (lab/analysis/_kernels.c) reads: number -> (name, bytes before IPv4,
# where the network protocol is named). Ethernet may add up to two 4-byte VLAN tags.
LINK_LAYERS: dict[int, tuple[str, int, str]] = {
    1: ("ethernet", 14, "EtherType 0x0800 at 12 (behind 802.1Q/802.1ad/0x9100 tags: at 16, 20)"),
    113: ("linux-sll", 16, "protocol 0x0800 at 14"),
    276: ("linux-sll2", 20, "protocol 0x0800 at 0"),
    101: ("raw", 0, "IP version nibble 4"),
    228: ("ipv4", 0, "IP version nibble 4"),
    0: ("null", 4, "AF_INET (2) as a 4-byte word in either byte order"),
}


@dataclass
class PacketTable:
    """One row per packet. Header columns are 0 where `status` says they are unknown."""
    ts_ns: np.ndarray            # int64, as stamped by the capture
    interface: np.ndarray        # uint16
    direction: np.ndarray        # int8: 0 unknown, 1 inbound, 2 outbound (pcapng epb_flags)
    caplen: np.ndarray           # uint32
    wire_len: np.ndarray         # uint32, the frame's original length (no FCS)
    linktype: np.ndarray         # uint16
    status: np.ndarray           # uint8, see STATUS_NAMES
    l3_offset: np.ndarray        # int64, packet start to the IPv4 header
    vlan_tags: np.ndarray        # uint8, 802.1Q/802.1ad tags in front of IPv4 (Ethernet only)
    ip_len: np.ndarray           # uint16, IPv4 total length
    src_ip: np.ndarray           # uint32
    dst_ip: np.ndarray           # uint32
    proto: np.ndarray            # uint8
    src_port: np.ndarray         # uint16 (TCP/UDP)
    dst_port: np.ndarray         # uint16
    tcp_seq: np.ndarray          # uint32
    tcp_ack: np.ndarray          # uint32
    tcp_flags: np.ndarray        # uint16 (FIN 0x01 ... CWR 0x80, NS 0x100)
    payload_offset: np.ndarray   # int64, into the batch's data buffer: the TCP/UDP payload (the IP
                                 # payload for other protocols)
    payload_len: np.ndarray      # int32, its bytes per the headers (Ethernet padding excluded)
    payload_caplen: np.ndarray   # int32, of those, how many were captured

    def __len__(self) -> int:
        return self.ts_ns.size

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_pandas(self):
        import pandas as pd
        return pd.DataFrame(self.columns())

    def status_counts(self) -> dict[str, int]:
        """Packets per problem (OK rows are not counted)."""
        counts = np.bincount(self.status[self.status != OK], minlength=len(STATUS_NAMES))
        return {STATUS_NAMES[code]: int(count) for code, count in enumerate(counts)
                if count and code != OK}


# Columns the kernel fills, in the order lab/analysis/_kernels.c takes them, with their dtypes.
_KERNEL_COLUMNS = {
    "linktype": np.uint16, "status": np.uint8, "l3_offset": np.int64, "vlan_tags": np.uint8,
    "ip_len": np.uint16, "src_ip": np.uint32, "dst_ip": np.uint32, "proto": np.uint8,
    "src_port": np.uint16, "dst_port": np.uint16, "tcp_seq": np.uint32, "tcp_ack": np.uint32,
    "tcp_flags": np.uint16, "payload_offset": np.int64, "payload_len": np.int32, "payload_caplen": np.int32,
}

# How the kernel tells a market-data datagram from other UDP, and reads its seq: by default the
# WM declaration's probe (engine.protocol.md; magic, version and type, at least the best bid and
# ask, and the length field equal to both the entry counts and the UDP payload).
MD_LAYOUT = md_protocol(DEFAULT_MD).kernel_probe


class Workspace:
    """Output columns reused from batch to batch: decode() then writes into memory that is
    already mapped instead of faulting in ~60 fresh bytes per packet each batch. A table
    decoded into a workspace is valid until the next decode() into it."""

    def __init__(self):
        self.columns: dict[str, np.ndarray] = {}

    def take(self, n: int) -> dict[str, np.ndarray]:
        if not self.columns or self.columns["status"].size < n:
            self.columns = {name: np.empty(n, dtype) for name, dtype in _KERNEL_COLUMNS.items()}
            self.columns["md_seq"] = np.empty(n, np.int64)
        return {name: column[:n] for name, column in self.columns.items()}


def decode(batch, linktypes, md_seq: bool = False, workspace: Workspace | None = None, md_probe=MD_LAYOUT):
    """Decode every packet of `batch`. `linktypes[i]` is interface i's link type.

    With md_seq=True returns (PacketTable, md_seq): md_seq is the seq of each
    packet whose UDP payload is a valid market-data datagram of one message, as the
    MD protocol's `kernel_probe` tells (WM by default), else -1, read in the same pass.
    """
    n = len(batch)
    columns = (workspace or Workspace()).take(n)
    seq = columns.pop("md_seq")
    if not md_seq:
        seq = None
    numbers = np.asarray(list(linktypes), dtype=np.int64)
    table = np.where((numbers >= 0) & (numbers < 0xFFFF), numbers, 0xFFFF).astype(np.uint16)
    _kernels.decode(batch.data, np.ascontiguousarray(batch.offset, np.int64),
                   np.ascontiguousarray(batch.caplen, np.uint32), np.ascontiguousarray(batch.interface, np.uint16),
                   table, tuple(columns.values()), seq, md_probe)
    result = PacketTable(ts_ns=batch.ts_ns, interface=batch.interface, direction=batch.direction,
                         caplen=batch.caplen, wire_len=batch.wire_len, **columns)
    return (result, seq) if md_seq else result
