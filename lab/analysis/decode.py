"""Columnar decode of captured packets: link layer, IPv4, TCP and UDP headers.

A PacketBatch goes in; a PacketTable (one numpy column per field, one row per
packet) comes out. Headers are described as data (numpy structured dtypes) and
read for all packets at once with window gathers, one pass per link type: there
is no loop over packets. Every gather is guarded by caplen; a packet that is
not IPv4, is cut short, or is an IP fragment is flagged in `status`, never
trusted.

Link types: Ethernet (1, with up to two 802.1Q/802.1ad tags), Linux cooked
SLL (113) and SLL2 (276), raw IP (101, version checked) and raw IPv4 (228), and
BSD loopback/null (0, address family in either byte order).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from lab.analysis.gather import gather_fields

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
ETHERTYPE_IPV4 = 0x0800
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ outer), legacy QinQ

# TCP flag bits (tcp_flags column)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _header(itemsize: int, **fields_at: tuple[str, int]) -> np.dtype:
    """A structured dtype from name=(format, offset); fields may overlap (unions)."""
    names = list(fields_at)
    return np.dtype({
        "names": names,
        "formats": [fields_at[n][0] for n in names],
        "offsets": [fields_at[n][1] for n in names],
        "itemsize": itemsize,
    })


# --- link layers ------------------------------------------------------------
@dataclass(frozen=True)
class LinkLayer:
    """How to find the IPv4 header behind one link type."""
    name: str
    header: int                     # bytes before the network layer (Ethernet: untagged)
    type_format: str | None         # numpy format of the field naming the network protocol
    type_offset: int = 0
    ipv4_types: tuple[int, ...] = ()  # values of that field that mean IPv4


LINK_LAYERS: dict[int, LinkLayer] = {
    1: LinkLayer("ethernet", 14, ">u2", 12, (ETHERTYPE_IPV4,)),
    113: LinkLayer("linux-sll", 16, ">u2", 14, (ETHERTYPE_IPV4,)),
    276: LinkLayer("linux-sll2", 20, ">u2", 0, (ETHERTYPE_IPV4,)),
    101: LinkLayer("raw", 0, None),          # raw IP: the version nibble says v4 or v6
    228: LinkLayer("ipv4", 0, None),
    # BSD loopback: AF_INET (2) as a 4-byte word in the byte order of the host that wrote it.
    0: LinkLayer("null", 4, "<u4", 0, (2, 2 << 24)),
}

# --- IPv4 and the transport header behind a 20-byte IPv4 header -------------
IPV4_HEADER = 20
TCP_HEADER = 20
UDP_HEADER = 8
IPV4_FIELDS = {
    "ver_ihl": ("u1", 0), "total_len": (">u2", 2), "frag": (">u2", 6), "proto": ("u1", 9),
    "src": (">u4", 12), "dst": (">u4", 16),
}
L4_FIELDS = {  # TCP; UDP shares the ports (and its length sits where TCP's seq starts)
    "sport": (">u2", 0), "dport": (">u2", 2), "seq": (">u4", 4), "ack": (">u4", 8), "off_flags": (">u2", 12),
}
IPV4_L4 = _header(IPV4_HEADER + TCP_HEADER, **IPV4_FIELDS,
                  **{name: (fmt, IPV4_HEADER + at) for name, (fmt, at) in L4_FIELDS.items()})
L4 = _header(TCP_HEADER, **L4_FIELDS)
ETHERNET_TAGS = _header(22, type1=(">u2", 16), type2=(">u2", 20))  # EtherTypes behind 1 and 2 tags


def _window(layer: LinkLayer) -> np.dtype:
    """The link header, the IPv4 header and a TCP header, as one record at the packet's start."""
    shifted = {name: (fmt, layer.header + at) for name, (fmt, at) in IPV4_L4.fields.items()}
    link = {"link_type": (layer.type_format, layer.type_offset)} if layer.type_format else {}
    return _header(layer.header + IPV4_L4.itemsize, **link,
                   **{name: (fmt.str, at) for name, (fmt, at) in shifted.items()})


WINDOWS = {number: _window(layer) for number, layer in LINK_LAYERS.items()}


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
        counts = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return {STATUS_NAMES[code]: int(count) for code, count in enumerate(counts)
                if count and code != OK}


# Columns decode() fills per link-type group, with their dtypes.
_GROUP_COLUMNS = {
    "status": np.uint8, "l3_offset": np.int64, "vlan_tags": np.uint8, "ip_len": np.uint16,
    "src_ip": np.uint32, "dst_ip": np.uint32, "proto": np.uint8, "src_port": np.uint16,
    "dst_port": np.uint16, "tcp_seq": np.uint32, "tcp_ack": np.uint32, "tcp_flags": np.uint16,
    "payload_offset": np.int64, "payload_len": np.int32, "payload_caplen": np.int32,
}


def linktypes_of(interface: np.ndarray, linktypes) -> tuple[np.ndarray, np.ndarray]:
    """(each packet's link type, the distinct link types present). Unknown interface -> 0xFFFF."""
    table = np.asarray(list(linktypes) + [0xFFFF], dtype=np.uint16)
    if interface.size and interface.min() == interface.max():
        number = table[min(int(interface[0]), table.size - 1)]
        return np.full(interface.size, number, np.uint16), np.array([number], np.uint16)
    linktype = table[np.minimum(interface.astype(np.int64), table.size - 1)]
    return linktype, np.unique(linktype)


# Packets decoded per step: small enough that one step's header windows stay in the
# CPU cache while a dozen columns are read out of them (measured ~1.5x faster than
# whole-batch passes on a 2M-packet batch).
CHUNK = 16384


def decode(batch, linktypes) -> PacketTable:
    """Decode every packet of `batch`. `linktypes[i]` is interface i's link type."""
    n = len(batch)
    start = np.asarray(batch.offset, dtype=np.int64)
    caplen = np.asarray(batch.caplen, dtype=np.int64)
    linktype, numbers = linktypes_of(np.asarray(batch.interface), linktypes)
    columns = {name: np.zeros(n, dtype) for name, dtype in _GROUP_COLUMNS.items()}
    for number in numbers:
        if int(number) not in LINK_LAYERS:
            columns["status"][linktype == number] = UNSUPPORTED_LINKTYPE
            continue
        if numbers.size == 1:                      # write straight into the columns
            for first in range(0, n, CHUNK):
                part = slice(first, first + CHUNK)
                _decode_chunk(int(number), batch.data, start[part], caplen[part],
                              {name: column[part] for name, column in columns.items()})
            continue
        rows = np.flatnonzero(linktype == number)
        for first in range(0, rows.size, CHUNK):
            where = rows[first:first + CHUNK]
            out = {name: np.zeros(where.size, dtype) for name, dtype in _GROUP_COLUMNS.items()}
            _decode_chunk(int(number), batch.data, start[where], caplen[where], out)
            for name, values in out.items():
                columns[name][where] = values
    return PacketTable(ts_ns=batch.ts_ns, interface=batch.interface, direction=batch.direction,
                       caplen=batch.caplen, wire_len=batch.wire_len, linktype=linktype, **columns)


def _decode_chunk(number: int, data: np.ndarray, start: np.ndarray, caplen: np.ndarray, out: dict) -> None:
    """Fill `out` (zeroed columns) for packets of one link type.

    The fast path takes the usual packet (untagged, IPv4 without options, not a
    fragment, TCP or UDP, headers all captured) with a handful of whole-array
    operations; every other packet goes through _decode_group, which checks
    each header in turn.
    """
    layer = LINK_LAYERS[number]
    head = gather_fields(data, start, WINDOWS[number])
    if number == 1:
        fast = head["link_type"] == ETHERTYPE_IPV4
    elif layer.type_format is None:
        fast = np.ones(start.size, bool)        # version checked with the IHL below
    else:
        fast = np.isin(head["link_type"], layer.ipv4_types)
    proto = out["proto"]
    proto[:] = head["proto"]
    is_tcp = proto == PROTO_TCP
    off_flags = head["off_flags"].astype(np.uint16)
    tcp_header = (off_flags >> 12).astype(np.int32) << 2
    l4_header = np.where(is_tcp, tcp_header, UDP_HEADER)
    payload_rel = (layer.header + IPV4_HEADER) + l4_header
    ip_len = out["ip_len"]
    ip_len[:] = head["total_len"]
    payload_len = out["payload_len"]
    np.subtract(ip_len, IPV4_HEADER + l4_header, out=payload_len, casting="unsafe")
    fast &= head["ver_ihl"] == 0x45
    fast &= (head["frag"] & 0x3FFF) == 0
    fast &= (proto == PROTO_UDP) | (is_tcp & (tcp_header >= TCP_HEADER))
    fast &= payload_len >= 0
    fast &= caplen >= payload_rel
    tcp = fast & is_tcp
    out["l3_offset"][:] = layer.header
    out["src_ip"][:] = head["src"]
    out["dst_ip"][:] = head["dst"]
    out["src_port"][:] = head["sport"]
    out["dst_port"][:] = head["dport"]
    np.multiply(head["seq"], tcp, out=out["tcp_seq"], casting="unsafe")
    np.multiply(head["ack"], tcp, out=out["tcp_ack"], casting="unsafe")
    np.multiply(off_flags & 0x1FF, tcp, out=out["tcp_flags"], casting="unsafe")
    np.add(start, payload_rel, out=out["payload_offset"])
    np.minimum(caplen - payload_rel, payload_len, out=out["payload_caplen"], casting="unsafe")
    slow = np.flatnonzero(~fast)
    if slow.size:
        for name, values in _decode_group(number, data, start[slow], caplen[slow]).items():
            out[name][slow] = values


def _decode_group(number: int, data: np.ndarray, start: np.ndarray, caplen: np.ndarray) -> dict:
    """All columns for packets of one link type, every header checked in turn.

    Packets behind VLAN tags or with IP options get a second gather at their
    own offsets.
    """
    layer = LINK_LAYERS[number]
    n = start.size
    head = gather_fields(data, start, WINDOWS[number])
    l3 = np.full(n, layer.header, np.int64)
    tags = np.zeros(n, np.uint8)

    # Link layer: is it IPv4, and where does the IPv4 header start?
    if number == 1:
        ethertype = head["link_type"].astype(np.int32)
        tagged = np.flatnonzero(np.isin(ethertype, VLAN_ETHERTYPES))
        if tagged.size:
            inner = gather_fields(data, start[tagged], ETHERNET_TAGS)
            tags[tagged] = 1
            type1 = inner["type1"].astype(np.int32)
            double = np.isin(type1, VLAN_ETHERTYPES)
            tags[tagged[double]] = 2
            ethertype[tagged] = np.where(double, inner["type2"], type1)
            l3[tagged] += 4 * tags[tagged].astype(np.int64)
            moved = gather_fields(data, start[tagged] + l3[tagged], IPV4_L4)
            for name in IPV4_L4.names:
                head[name][tagged] = moved[name]
        is_ipv4 = ethertype == ETHERTYPE_IPV4
    elif layer.type_format is None:         # raw IP: IPv4 by its version nibble
        is_ipv4 = (head["ver_ihl"] >> 4) == 4
    else:
        is_ipv4 = np.isin(head["link_type"], layer.ipv4_types)
    status = np.where(is_ipv4, OK, NOT_IPV4).astype(np.uint8)
    status[caplen < np.maximum(l3, 1)] = TRUNCATED     # the link header itself is cut

    # IPv4
    ver_ihl = head["ver_ihl"]
    ihl = (ver_ihl & 0x0F).astype(np.int64) << 2
    total_len = head["total_len"].astype(np.int64)
    proto = head["proto"]
    room = caplen - l3                                 # captured bytes from the IPv4 header on
    bad = ((ver_ihl >> 4) != 4) | (ihl < IPV4_HEADER) | (total_len < ihl)
    ok = status == OK
    status[ok & (room < IPV4_HEADER)] = TRUNCATED
    ok = status == OK
    status[ok & bad] = BAD_IPV4
    ok = status == OK
    status[ok & (room < ihl)] = TRUNCATED
    ok = status == OK
    # More Fragments set, or a fragment offset: the L4 header is not (all) here.
    status[ok & ((head["frag"] & 0x3FFF) != 0)] = IP_FRAGMENT

    # TCP / UDP
    is_tcp = proto == PROTO_TCP
    is_udp = proto == PROTO_UDP
    l4 = l3 + ihl
    ok = status == OK
    status[ok & is_tcp & (caplen < l4 + TCP_HEADER)] = TRUNCATED
    status[ok & is_udp & (caplen < l4 + UDP_HEADER)] = TRUNCATED
    ok = status == OK
    options = np.flatnonzero(ok & (ihl != IPV4_HEADER) & (is_tcp | is_udp))
    if options.size:
        moved = gather_fields(data, start[options] + l4[options], L4)
        for name in L4.names:
            head[name][options] = moved[name]
    off_flags = head["off_flags"].astype(np.uint16)
    tcp_header = (off_flags >> 12).astype(np.int64) << 2
    tcp = ok & is_tcp
    status[tcp & (tcp_header < TCP_HEADER)] = BAD_IPV4
    tcp &= tcp_header >= TCP_HEADER
    status[tcp & (caplen < l4 + tcp_header)] = TRUNCATED   # TCP options cut
    ok = status == OK
    tcp &= ok
    udp = ok & is_udp
    payload = l4 + np.where(tcp, tcp_header, np.where(udp, UDP_HEADER, 0))
    payload_len = total_len - (payload - l3)
    status[ok & (payload_len < 0)] = BAD_IPV4
    ok = status == OK
    tcp &= ok
    transport = tcp | (ok & is_udp)
    payload_len = np.where(ok, payload_len, 0)

    known = ok | (status == IP_FRAGMENT)
    columns = {
        "status": status,
        "l3_offset": l3,
        "vlan_tags": tags,
        "ip_len": total_len.astype(np.uint16),
        "src_ip": head["src"].astype(np.uint32),
        "dst_ip": head["dst"].astype(np.uint32),
        "proto": proto.copy(),
        "src_port": head["sport"].astype(np.uint16),
        "dst_port": head["dport"].astype(np.uint16),
        "tcp_seq": head["seq"].astype(np.uint32),
        "tcp_ack": head["ack"].astype(np.uint32),
        "tcp_flags": off_flags & 0x1FF,
        "payload_offset": np.where(ok, start + payload, 0),
        "payload_len": payload_len.astype(np.int32),
        "payload_caplen": np.clip(caplen - payload, 0, payload_len).astype(np.int32),
    }
    unknown = np.flatnonzero(~known)
    for name in ("ip_len", "src_ip", "dst_ip", "proto"):
        columns[name][unknown] = 0
    not_transport = np.flatnonzero(~transport)
    for name in ("src_port", "dst_port"):
        columns[name][not_transport] = 0
    for name in ("tcp_seq", "tcp_ack", "tcp_flags"):
        columns[name] = np.where(tcp, columns[name], 0).astype(columns[name].dtype)
    return columns
