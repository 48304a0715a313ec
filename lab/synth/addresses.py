"""The synth's address plan: the host, the feed and the gateway on 198.18.0.0/15 (the benchmarking
range), the feed's multicast group, their MACs and ports."""
from __future__ import annotations

def _ip(text: str) -> int:
    a, b, c, d = map(int, text.split("."))
    return a << 24 | b << 16 | c << 8 | d


HOST_IP, FEED_IP, MD_GROUP_IP, GATEWAY_IP = (_ip(a) for a in
                                             ("198.18.0.10", "198.18.1.1", "239.18.0.1", "198.19.0.1"))
HOST_MAC = bytes.fromhex("0200c612000a")
ROUTER_MAC = bytes.fromhex("0200c6120001")
MD_GROUP_MAC = bytes.fromhex("01005e") + (MD_GROUP_IP & 0x7FFFFF).to_bytes(3, "big")
MD_PORT, HOST_PORT, GATEWAY_PORT = 30001, 40001, 9000

# Ethernet II + IPv4 (no options) + UDP / TCP (no options), headers as data, network byte order.
