"""Framing overheads as data, in the manner of dpkt: one table per layer.

A packet is an IP datagram of `l3_bytes`. Each link wraps it in its own framing:

    wire bytes = preamble + max(header + l3_bytes + trailer, min_frame)

`gap` idle bytes are enforced *between* frames on a transmitter; a lone frame
does not pay it. `first_bit` of a frame is the first bit of its preamble (or
opening flag); `last_bit` is the last bit of its trailer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Framing:
    name: str
    preamble: int   # bytes before the frame proper (Ethernet preamble + SFD, HDLC opening flag)
    header: int     # link header (Ethernet 14 + 4 per 802.1Q tag; HDLC address + control)
    trailer: int    # FCS (+ HDLC closing flag)
    min_frame: int  # header + payload + trailer is padded up to this (Ethernet 64)
    gap: int        # idle bytes between consecutive frames (Ethernet IFG 12)

    def wire_bytes(self, l3_bytes):
        """Bytes the frame occupies on the medium, without the inter-frame gap."""
        frame = np.maximum(self.header + l3_bytes + self.trailer, self.min_frame)
        return self.preamble + frame if isinstance(l3_bytes, np.ndarray) else int(self.preamble + frame)

    def l3_offset(self) -> int:
        """Bytes from the frame's first bit to the first byte of the IP datagram."""
        return self.preamble + self.header


FRAMINGS: dict[str, Framing] = {
    "ethernet": Framing("ethernet", preamble=8, header=14, trailer=4, min_frame=64, gap=12),
    "ethernet-dot1q": Framing("ethernet-dot1q", preamble=8, header=18, trailer=4, min_frame=64, gap=12),
    "ethernet-qinq": Framing("ethernet-qinq", preamble=8, header=22, trailer=4, min_frame=64, gap=12),
    # HDLC-like serial framing: flag, address, control, FCS-16, flag.
    "hdlc": Framing("hdlc", preamble=1, header=2, trailer=3, min_frame=0, gap=0),
    # The seed's round numbers: the packet is exactly its bytes on the wire.
    "raw": Framing("raw", preamble=0, header=0, trailer=0, min_frame=0, gap=0),
}

FRAMING_KEYS = ("preamble", "header", "trailer", "min_frame", "gap")
ETHERNET = FRAMINGS["ethernet"]
NS_PER_S = 10**9


def ethernet_wire_ns(frame_len, rate_bps: int):
    """ns a captured Ethernet frame takes on the wire at `rate_bps`, from the preamble's first bit
    to the FCS's last, rounded up. `frame_len` counts the frame as a capture holds it (MAC
    header and payload, no FCS: pcap's wire length). An int, or an int64 array for arrays."""
    return _ceil_ns(ETHERNET.preamble + np.maximum(np.asarray(frame_len, np.int64) + ETHERNET.trailer,
                                                   ETHERNET.min_frame), rate_bps)


def ethernet_slot_ns(frame_len, rate_bps: int):
    """ethernet_wire_ns with the inter-frame gap: from a frame's first bit to the earliest first bit
    of the next frame on the same transmitter."""
    return _ceil_ns(ETHERNET.preamble + np.maximum(np.asarray(frame_len, np.int64) + ETHERNET.trailer,
                                                   ETHERNET.min_frame) + ETHERNET.gap, rate_bps)


def _ceil_ns(wire_bytes, rate_bps: int):
    ns = -(-(wire_bytes * 8 * NS_PER_S) // rate_bps)
    return int(ns) if np.ndim(ns) == 0 else ns


@dataclass(frozen=True)
class Transport:
    name: str
    header: int  # IP header + transport header, bytes before the application payload


IPV4_HEADER = 20
TRANSPORTS: dict[str, Transport] = {
    "udp": Transport("udp", IPV4_HEADER + 8),
    "tcp": Transport("tcp", IPV4_HEADER + 20),
    # TCP with the timestamp option (12 bytes with padding), as Linux sends by default.
    "tcp-ts": Transport("tcp-ts", IPV4_HEADER + 32),
    "raw": Transport("raw", 0),
}
