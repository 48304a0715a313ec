"""Ethernet II + IPv4 + UDP/TCP frames, many at a time: the headers as data (numpy dtypes in
network byte order, in the manner of dpkt), the payloads laid behind them, and the Internet
checksums (RFC 1071), all with numpy over whole batches. lab synth and the sockets rebuild of
`lab run` build their frames here."""
from __future__ import annotations

import numpy as np

_ETH_IPV4 = [("eth_dst", "V6"), ("eth_src", "V6"), ("eth_type", ">u2"),
             ("version_ihl", "u1"), ("tos", "u1"), ("ip_length", ">u2"), ("ip_id", ">u2"),
             ("fragment", ">u2"), ("ttl", "u1"), ("protocol", "u1"), ("ip_checksum", ">u2"),
             ("ip_src", ">u4"), ("ip_dst", ">u4")]
UDP_FRAME_HEADER = np.dtype(_ETH_IPV4 + [("sport", ">u2"), ("dport", ">u2"), ("udp_length", ">u2"),
                                         ("udp_checksum", ">u2")])
TCP_FRAME_HEADER = np.dtype(_ETH_IPV4 + [("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"),
                                         ("offset_flags", ">u2"), ("window", ">u2"),
                                         ("tcp_checksum", ">u2"), ("urgent", ">u2")])
# The TCP header Linux sends by default: NOP, NOP, timestamps (kind 8, 10 bytes): 32 bytes.
TCP_TIMESTAMPS_FRAME_HEADER = np.dtype(TCP_FRAME_HEADER.descr + [("options", "V12")])
TCP_TIMESTAMPS_OPTION = bytes([1, 1, 8, 10]) + bytes(8)
L3_OFFSET = 14
L4_OFFSET = L3_OFFSET + 20
UDP_CHECKSUM_AT = UDP_FRAME_HEADER.fields["udp_checksum"][1]
TCP_CHECKSUM_AT = TCP_FRAME_HEADER.fields["tcp_checksum"][1]
IP_CHECKSUM_AT = UDP_FRAME_HEADER.fields["ip_checksum"][1]
MIN_CAPTURED_FRAME = 60                            # 64-byte minimum frame less its FCS: padded to this
TCP_SYN, TCP_ACK, TCP_PSH, TCP_FIN = 0x02, 0x10, 0x08, 0x01


def header_rows(dtype: np.dtype, count: int) -> np.ndarray:
    """`count` zeroed headers of `dtype` with the constant IPv4 fields set."""
    rows = np.zeros(count, dtype)
    rows["eth_type"], rows["version_ihl"] = 0x0800, 0x45
    return rows


def frame_rows(frame_len: np.ndarray) -> np.ndarray:
    """Zeroed rows, one per frame, wide enough for the longest (and even: checksums sum words)."""
    return np.zeros((frame_len.size, int(frame_len.max(initial=0)) + 1 & ~1), np.uint8)


def put_payloads(out: np.ndarray, rows: np.ndarray, at: np.ndarray, source: np.ndarray, start: np.ndarray,
                 length: np.ndarray) -> None:
    """Copy source[start[i]:start[i] + length[i]] into row rows[i] of `out` from byte at[i]."""
    within = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
    target = np.repeat(rows * out.shape[1] + at, length) + within
    out.reshape(-1)[target] = source[np.repeat(start, length) + within]


def frames_bytes(out: np.ndarray, frame_len: np.ndarray) -> np.ndarray:
    """The frames of `out`'s rows back to back, each cut to its length."""
    return out[np.arange(out.shape[1], dtype=np.int64) < frame_len[:, None]]


def _complement(total):
    for _ in range(2):
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _store(out, rows, at, checksum):
    out[rows, at], out[rows, at + 1] = checksum & 0xFF, checksum >> 8


def put_ipv4_checksums(out: np.ndarray) -> None:
    """The IPv4 header checksum of every row's frame (IPv4 without options).

    Words are summed little-endian (faster); the ones' complement sum is then byte-swapped
    (RFC 1071), so each checksum is stored low byte first to land in network order.
    """
    words = out.view("<u2")                          # rows have an even width
    _store(out, np.arange(out.shape[0]), IP_CHECKSUM_AT,
           _complement(words[:, L3_OFFSET // 2:L4_OFFSET // 2].sum(axis=1, dtype=np.uint32)))


def put_checksums(out: np.ndarray, is_udp: np.ndarray, l4_payload: np.ndarray) -> None:
    """IPv4 header checksums, then UDP/TCP checksums over the pseudo-header, header and payload
    (TCP without options; `l4_payload` bytes after each UDP or TCP header).

    Rows are zero past each frame's end (Ethernet padding is zero too), so the sum of a
    row's 16-bit words from the L4 header on is exactly the L4 sum.
    """
    put_ipv4_checksums(out)
    words = out.view("<u2")
    addresses = words[:, (L3_OFFSET + 12) // 2:L4_OFFSET // 2].sum(axis=1, dtype=np.uint32)
    l4_len = (np.where(is_udp, 8, 20) + l4_payload).astype(np.uint32)
    pseudo = addresses + (np.where(is_udp, 17, 6).astype(np.uint32) << 8) + (l4_len >> 8) + ((l4_len & 0xFF) << 8)
    checksum = _complement(words[:, L4_OFFSET // 2:].sum(axis=1, dtype=np.uint32) + pseudo)
    udp_rows, tcp_rows = np.flatnonzero(is_udp), np.flatnonzero(~is_udp)
    _store(out, udp_rows, UDP_CHECKSUM_AT, np.where(checksum[udp_rows] == 0, 0xFFFF, checksum[udp_rows]))  # 0: ffff
    _store(out, tcp_rows, TCP_CHECKSUM_AT, checksum[tcp_rows])
