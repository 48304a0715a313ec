"""The synth's frames as bytes: headers from templates patched with numpy (lab.capture.frames),
the market-data payloads from the MD protocol, the TCP payloads from the two streams."""
from __future__ import annotations

import numpy as np

from engine.protocol.registry import md_protocol
from lab.capture.frames import (TCP_FRAME_HEADER, UDP_FRAME_HEADER, frame_rows, frames_bytes, header_rows,
                                put_checksums, put_payloads)
from lab.synth.addresses import (FEED_IP, GATEWAY_IP, GATEWAY_PORT, HOST_IP, HOST_MAC, HOST_PORT, MD_GROUP_IP,
                                 MD_GROUP_MAC, MD_PORT, ROUTER_MAC)
from lab.synth.market import TICK
from lab.synth.tcp import KIND_HOST_TCP, KIND_MD, KIND_VENUE_TCP, Frames


def build_frames(synthesis, rows: np.ndarray, ip_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of frames `rows` (back to back) and their lengths: headers from
    templates patched with numpy, payloads gathered, checksums computed per row."""
    f = synthesis.frames.take(rows)
    frame_len = f.frame_len
    out = frame_rows(frame_len)
    is_md = f.kind == KIND_MD
    md_rows, tcp_rows = np.flatnonzero(is_md), np.flatnonzero(~is_md)
    _put_udp(out, md_rows, f, ip_id[is_md], synthesis)
    _put_tcp(out, tcp_rows, f, ip_id[~is_md], synthesis)
    put_checksums(out, is_md, f.length)
    return frames_bytes(out, frame_len), frame_len


def _put_udp(out: np.ndarray, rows: np.ndarray, f: Frames, ip_id: np.ndarray, synthesis) -> None:
    length = f.length[rows]
    header = header_rows(UDP_FRAME_HEADER, rows.size)
    header["eth_dst"], header["eth_src"] = np.void(MD_GROUP_MAC), np.void(ROUTER_MAC)
    header["ip_length"], header["ip_id"], header["ttl"], header["protocol"] = 28 + length, ip_id, 60, 17
    header["ip_src"], header["ip_dst"] = FEED_IP, MD_GROUP_IP
    header["sport"], header["dport"], header["udp_length"] = MD_PORT, MD_PORT, 8 + length
    out[rows, :UDP_FRAME_HEADER.itemsize] = header.view(np.uint8).reshape(rows.size, header.dtype.itemsize)
    payloads, where = md_protocol(synthesis.config.md_format).synth_payloads(synthesis.md_columns, f.ref[rows], TICK)
    put_payloads(out, rows, UDP_FRAME_HEADER.itemsize, payloads, where, length)


def _put_tcp(out: np.ndarray, rows: np.ndarray, f: Frames, ip_id: np.ndarray, synthesis) -> None:
    from_host = f.kind[rows] == KIND_HOST_TCP
    length, flags = f.length[rows], f.flags[rows]
    header = header_rows(TCP_FRAME_HEADER, rows.size)
    host_mac, router_mac = np.void(HOST_MAC), np.void(ROUTER_MAC)
    header["eth_dst"] = np.where(from_host, router_mac, host_mac)
    header["eth_src"] = np.where(from_host, host_mac, router_mac)
    header["ip_length"], header["ip_id"], header["fragment"] = 40 + length, ip_id, 0x4000
    header["ttl"], header["protocol"] = np.where(from_host, 64, 61), 6
    header["ip_src"] = np.where(from_host, HOST_IP, GATEWAY_IP)
    header["ip_dst"] = np.where(from_host, GATEWAY_IP, HOST_IP)
    header["sport"] = np.where(from_host, HOST_PORT, GATEWAY_PORT)
    header["dport"] = np.where(from_host, GATEWAY_PORT, HOST_PORT)
    own_isn = np.where(from_host, synthesis.host_isn, synthesis.venue_isn)
    peer_isn = np.where(from_host, synthesis.venue_isn, synthesis.host_isn)
    ack = f.ack[rows]
    header["seq"] = (own_isn + f.seq[rows]) % 2**32
    header["ack"] = np.where(ack >= 0, (peer_isn + ack) % 2**32, 0)
    header["offset_flags"] = 5 << 12 | flags.astype(np.uint16)
    header["window"] = np.where(from_host, 64_240, 65_535)
    out[rows, :TCP_FRAME_HEADER.itemsize] = header.view(np.uint8).reshape(rows.size, header.dtype.itemsize)
    source = f.ref[rows] + np.where(from_host, 0, synthesis.host_stream_bytes)
    put_payloads(out, rows, TCP_FRAME_HEADER.itemsize, synthesis.streams, source, length)


def ip_ids(frames: Frames, order: np.ndarray) -> np.ndarray:
    """IPv4 ids, counting up per sender in the order the frames are written."""
    kind = frames.kind[order]
    ids = np.empty(order.size, np.int64)
    for value in (KIND_MD, KIND_HOST_TCP, KIND_VENUE_TCP):
        mine = kind == value
        ids[mine] = (1_000 * (value + 1) + np.arange(int(mine.sum()))) % 2**16
    return ids
