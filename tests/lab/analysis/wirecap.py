"""Small hand-built captures for the analysis tests: frames from scapy, payloads from engine.protocol."""
from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from engine.protocol.md import ASK, BID, SET, L2Update, MdDatagram
from engine.protocol.orders import BUY, NewOrder
from lab.capture import Interface, PacketBatch, PcapngWriter, PcapWriter

HOST, VENUE, FEED, GROUP = "198.18.0.2", "198.18.1.1", "198.18.2.1", "239.1.1.1"
FEED_PORT, HOST_PORT, VENUE_PORT = 5000, 40000, 9000
ISN = 1_000


def md_payload(seq: int) -> bytes:
    return MdDatagram(venue=1, seq=seq, instrument=7, send_ts_ns=0,
                      updates=(L2Update(BID, SET, 100, 5), L2Update(ASK, SET, 101, 5))).encode()


def md_frame(seq: int) -> bytes:
    return bytes(Ether() / IP(src=FEED, dst=GROUP) / UDP(sport=FEED_PORT, dport=FEED_PORT) / md_payload(seq))


def new_order(trigger_seq: int, client_order_id: int) -> bytes:
    return NewOrder(account=1, client_order_id=client_order_id, trigger_seq=trigger_seq, instrument=7,
                    side=BUY, price=101, qty=1).encode()


def order_frame(payload: bytes, stream_offset: int, *, isn: int = ISN, src=HOST, dst=VENUE,
                sport=HOST_PORT, dport=VENUE_PORT, flags="PA") -> bytes:
    seq = (isn + 1 + stream_offset) % (1 << 32)
    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, flags=flags) / payload)


def syn_frame(*, isn: int = ISN, src=HOST, dst=VENUE, sport=HOST_PORT, dport=VENUE_PORT) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=isn, flags="S"))


def batch_of(frames: list[bytes], ts_ns=None, interface=None, direction=None) -> PacketBatch:
    """A PacketBatch over the frames laid end to end, with a gap between them."""
    gap = 16
    lengths = np.array([len(f) for f in frames], np.int64)
    offsets = gap + np.concatenate(([0], np.cumsum(lengths + gap)[:-1])) if frames else np.zeros(0, np.int64)
    data = np.zeros(int(offsets[-1] + lengths[-1]) if frames else 0, np.uint8)
    for offset, frame in zip(offsets, frames):
        data[offset:offset + len(frame)] = np.frombuffer(frame, np.uint8)
    n = len(frames)
    return PacketBatch(
        data=data, offset=offsets.astype(np.int64), caplen=lengths.astype(np.uint32),
        wire_len=lengths.astype(np.uint32),
        ts_ns=np.arange(n, dtype=np.int64) if ts_ns is None else np.asarray(ts_ns, np.int64),
        interface=np.zeros(n, np.uint16) if interface is None else np.asarray(interface, np.uint16),
        direction=np.zeros(n, np.int8) if direction is None else np.asarray(direction, np.int8))


def write_pcap(path, packets: list[tuple[int, bytes]], linktype: int = 1) -> None:
    with PcapWriter(path, linktype=linktype) as writer:
        for ts, frame in packets:
            writer.write(ts, frame)


def write_pcapng(path, packets: list[tuple[int, bytes, int]], linktype: int = 1) -> None:
    """packets: (ts_ns, frame, direction 0/1/2) on one interface."""
    interface = Interface(linktype=linktype, tsresol="1e-9", snaplen=0, name="host-tap",
                          description="test tap")
    with PcapngWriter(path, [interface]) as writer:
        for ts, frame, direction in packets:
            writer.write(0, ts, frame, direction)
