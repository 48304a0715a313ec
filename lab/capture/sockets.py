"""A run's loopback capture rebuilt from the stamps its own sockets took, without AF_PACKET.

Without CAP_NET_RAW `lab run` cannot capture on `lo`, but both ends' sockets stamp what
they send and receive:

- **market data**: the feed knows every datagram it sent and its kernel TX stamp. It
  becomes a UDP frame stamped there; on `lo` the engine's RX stamp follows within
  microseconds.
- **the engine's order stream**: the venue's gateway keeps every read (its bytes, its
  stream offset, its kernel RX stamp). A read can hold several sends, so reads are cut at
  message boundaries, and with tcp-prefix at each order's prefix end. Each piece becomes a
  TCP segment. A piece that is an order's deciding bytes or its primed prefix gets the
  kernel TX stamp the engine took of that send (its telemetry); any other piece (a cancel,
  a void) keeps its read's RX stamp.

What this cannot see: the engine's pure ACKs, the handshake's timing, and the venue's
replies. So the order path carries only the engine's messages, and the host tap has no
replies. Frames carry IPv4 127.0.0.1, the real ports and the 32-byte TCP header Linux sends
(with timestamps); TCP and UDP checksums are left 0 (the stack's offload does the same on
`lo`).
"""
from __future__ import annotations

import struct

import numpy as np

from lab.capture.records import PacketBatch
from lab.venue.gateway import Read

LOOPBACK = bytes([127, 0, 0, 1])
ETHERNET = bytes(12) + b"\x08\x00"
IPV4 = struct.Struct(">BBHHHBBH4s4s")
UDP = struct.Struct(">HHHH")
TCP = struct.Struct(">HHIIBBHHH")
TCP_TIMESTAMPS = bytes([1, 1, 8, 10]) + bytes(8)   # NOP NOP TS: the 32-byte header Linux sends
SYN, PSH_ACK = 0x02, 0x18
INBOUND, OUTBOUND = 1, 2


def _ipv4(protocol: int, payload: bytes) -> bytes:
    header = IPV4.pack(0x45, 0, 20 + len(payload), 0, 0x4000, 64, protocol, 0, LOOPBACK, LOOPBACK)
    total = sum(struct.unpack(">10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    return ETHERNET + header[:10] + struct.pack(">H", checksum) + header[12:] + payload


def udp_frame(src: int, dst: int, payload: bytes) -> bytes:
    return _ipv4(17, UDP.pack(src, dst, 8 + len(payload), 0) + payload)


def tcp_frame(src: int, dst: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    header = TCP.pack(src, dst, seq & 0xFFFFFFFF, 0, 8 << 4, flags, 65535, 0, 0) + TCP_TIMESTAMPS
    return _ipv4(6, header + payload)


def order_pieces(reads: list[Read], records: np.ndarray, prefix: int | None):
    """The reads cut at message boundaries (and prefix ends): (read, start, end) stream offsets."""
    starts = records["stream_offset"].astype(np.int64)
    cuts = set(starts.tolist()) | set((starts + records["message_bytes"]).tolist())
    if prefix:
        primed = np.isin(records["kind"], [b"new", b"void"])
        cuts |= set((records["stream_offset"][primed] + prefix).tolist())
    pieces = []
    for read in reads:
        start, end = read.stream_offset, read.stream_offset + len(read.data)
        inner = sorted(c for c in cuts if start < c < end)
        bounds = [start, *inner, end]
        pieces += [(read, a, b) for a, b in zip(bounds, bounds[1:])]
    return pieces


def rebuild(md_payloads: list[bytes], md_venue: np.ndarray, md_tx_ns: np.ndarray, feed_src: dict[int, int],
            feed_dst: dict[int, int], venues: list[tuple[int, int, list[Read], np.ndarray, dict[int, int]]],
            orders: np.ndarray, prefix: int | None) -> PacketBatch:
    """venues: (venue id, gateway port, the gateway's reads, its records, when it accepted each engine port);
    orders: the engine's telemetry."""
    frames, stamps, direction = [], [], []
    for payload, venue, tx in zip(md_payloads, md_venue.tolist(), md_tx_ns.tolist()):
        if tx > 0:
            frames.append(udp_frame(feed_src[venue], feed_dst[venue], payload))
            stamps.append(tx)
            direction.append(INBOUND)
    decided = {(int(v), int(c)): int(t) for v, c, t in zip(orders["venue"], orders["client_order_id"],
                                                          orders["kernel_tx_ns"]) if t > 0}
    primed = {(int(v), int(c)): int(t) for v, c, t in zip(orders["venue"], orders["client_order_id"],
                                                         orders["prefix_kernel_tx_ns"]) if t > 0}
    for venue, port, reads, records, accepted_ns in venues:
        if not reads:
            continue
        ends = {int(o) + int(n): int(c) for o, n, c in zip(records["stream_offset"], records["message_bytes"],
                                                          records["client_order_id"])}
        prefix_ends = {int(o) + prefix: int(c) for o, c, k in zip(records["stream_offset"],
                                                                  records["client_order_id"], records["kind"])
                       if prefix and k in (b"new", b"void")}
        engine_port = reads[0].peer_port
        first = len(stamps)
        for read, start, end in order_pieces(reads, records, prefix):
            data = read.data[start - read.stream_offset:end - read.stream_offset]
            key = (venue, ends.get(end, prefix_ends.get(end)))
            stamp = decided.get(key) if end in ends else primed.get(key) if end in prefix_ends else None
            frames.append(tcp_frame(engine_port, port, 1 + start, PSH_ACK, data))
            stamps.append(stamp or read.rx_ns)
            direction.append(OUTBOUND)
        frames.append(tcp_frame(engine_port, port, 0, SYN))       # the handshake: done when it was accepted
        stamps.append(min(accepted_ns.get(engine_port, stamps[first]), *stamps[first:]) - 1)
        direction.append(OUTBOUND)
    order = np.argsort(np.array(stamps, np.int64), kind="stable")
    frames = [frames[i] for i in order]
    lengths = np.array([len(f) for f in frames], np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    data = np.frombuffer(b"".join(frames), np.uint8)
    return PacketBatch(data=data, offset=offsets, caplen=lengths.astype(np.uint32), wire_len=lengths.astype(np.uint32),
                       ts_ns=np.array(stamps, np.int64)[order], interface=np.zeros(len(frames), np.uint16),
                       direction=np.array(direction, np.int8)[order])
