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

import numpy as np

from lab.capture.frames import (TCP_TIMESTAMPS_FRAME_HEADER, TCP_TIMESTAMPS_OPTION, UDP_FRAME_HEADER, frame_rows,
                                frames_bytes, header_rows, put_ipv4_checksums, put_payloads)
from lab.capture.records import INBOUND, OUTBOUND, PacketBatch
from lab.venue.gateway import Read

LOOPBACK = 0x7F000001
SYN, PSH_ACK = 0x02, 0x18


def loopback_frames(is_udp, sport, dport, seq, flags, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Frames as they cross `lo`, back to back, and their lengths: 127.0.0.1 both ways, TTL 64,
    DF, a zero Ethernet header, TCP with the timestamps option; UDP and TCP checksums 0."""
    is_udp = np.asarray(is_udp, bool)
    size = np.array([len(p) for p in payloads], np.int64)
    header = np.where(is_udp, UDP_FRAME_HEADER.itemsize, TCP_TIMESTAMPS_FRAME_HEADER.itemsize)
    frame_len = header + size
    out = frame_rows(frame_len)
    for rows, dtype in ((np.flatnonzero(is_udp), UDP_FRAME_HEADER),
                        (np.flatnonzero(~is_udp), TCP_TIMESTAMPS_FRAME_HEADER)):
        fields = header_rows(dtype, rows.size)
        fields["ip_length"], fields["fragment"], fields["ttl"] = header[rows] - 14 + size[rows], 0x4000, 64
        fields["ip_src"] = fields["ip_dst"] = LOOPBACK
        fields["sport"], fields["dport"] = np.asarray(sport)[rows], np.asarray(dport)[rows]
        if dtype is UDP_FRAME_HEADER:
            fields["protocol"], fields["udp_length"] = 17, 8 + size[rows]
        else:
            fields["protocol"], fields["seq"] = 6, np.asarray(seq, np.int64)[rows] & 0xFFFFFFFF
            fields["offset_flags"] = 8 << 12 | np.asarray(flags, np.uint16)[rows]
            fields["window"], fields["options"] = 65535, np.void(TCP_TIMESTAMPS_OPTION)
        out[rows, :dtype.itemsize] = fields.view(np.uint8).reshape(rows.size, dtype.itemsize)
    put_payloads(out, np.arange(size.size), header, np.frombuffer(b"".join(payloads), np.uint8),
                 np.cumsum(size) - size, size)
    put_ipv4_checksums(out)
    return frames_bytes(out, frame_len), frame_len


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
    frames, stamps, direction = [], [], []              # frames as (is_udp, sport, dport, seq, flags, payload)
    for payload, venue, tx in zip(md_payloads, md_venue.tolist(), md_tx_ns.tolist()):
        if tx > 0:
            frames.append((True, feed_src[venue], feed_dst[venue], 0, 0, payload))
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
            frames.append((False, engine_port, port, 1 + start, PSH_ACK, data))
            stamps.append(stamp or read.rx_ns)
            direction.append(OUTBOUND)
        frames.append((False, engine_port, port, 0, SYN, b""))    # the handshake: done when it was accepted
        stamps.append(min(accepted_ns.get(engine_port, stamps[first]), *stamps[first:]) - 1)
        direction.append(OUTBOUND)
    order = np.argsort(np.array(stamps, np.int64), kind="stable")
    columns = list(zip(*[frames[i] for i in order])) or [()] * 6
    data, lengths = loopback_frames(*columns[:5], list(columns[5]))
    return PacketBatch(data=data, offset=np.cumsum(lengths) - lengths, caplen=lengths.astype(np.uint32),
                       wire_len=lengths.astype(np.uint32), ts_ns=np.array(stamps, np.int64)[order],
                       interface=np.zeros(len(frames), np.uint16), direction=np.array(direction, np.int8)[order])
