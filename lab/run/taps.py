"""A hardware-style capture of a `lab run`, built from its loopback capture and the scenario.

Loopback has no wire, so the run's capture has kernel stamps only. Two taps are put back
where a real deployment would have them, each stamping the first bit of a frame unless
said otherwise:

- **host-tap**, on the host's link (the last hop of the MD path, the first of the order
  path). Inbound frames (market data, the venue's replies) were delivered to the engine's
  socket at their kernel stamp; their first bit passed the tap one wire time (at the
  link's rate and framing) and the NIC's receive latency earlier. Outbound frames (the
  engine's order segments, acks) were handed to the kernel at their stamp; their first
  bit passes the tap one NIC transmit latency later. The engine's order sends use the
  kernel TX stamps the engine took (its telemetry), not the tap's slightly earlier stamp.
- **exchange-tap**: market data leaving the exchange (the first bit at the MD path's
  start: the host-tap last bit minus the datagram's simulated transit, queueing
  included), and each engine segment **at its last byte at the arbiter**: the simulator
  carries every real departure from the host tap along the order path, in FIFO with
  the engine's other segments, and adds the arbiter's receive latency.

Frames keep their captured bytes; only stamps move. Both interfaces are Ethernet with
ns stamps, and each IDB's description states its convention.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.analysis.decode import OK, PROTO_TCP, PROTO_UDP, decode
from lab.capture.records import INBOUND, OUTBOUND, Interface, PacketBatch
from lab.capture.writer import PcapngWriter
from simulator.scenario import Scenario
from simulator.units import bits_time_ps, format_rate

HOST_TAP, EXCHANGE_TAP = "host-tap", "exchange-tap"
ETHERNET_HEADER = 14                # lo frames carry one, with zero addresses
PS_PER_NS = 1000
SEND_MATCH_NS = 50_000            # a frame is tapped at most this long before its TX stamp


@dataclass(frozen=True)
class HostLink:
    """What the scenario says about the host's side of the wire."""
    scenario: Scenario

    @property
    def inbound(self):
        return self.scenario.md_path.hops[-1]

    @property
    def outbound(self):
        return self.scenario.order_path.hops[0]

    @property
    def nic_rx_ps(self) -> int:
        receiver = self.scenario.md_path.receiver
        return receiver.serdes_rx_ps if receiver else 0

    @property
    def nic_tx_ps(self) -> int:
        sender = self.scenario.order_path.sender
        return sender.serdes_tx_ps if sender else 0

    @property
    def arbiter_rx_ps(self) -> int:
        arbiter = self.scenario.order_path.receiver
        return arbiter.rx_ps if arbiter else 0

    def wire_in_ps(self, l3_bytes: np.ndarray) -> np.ndarray:
        hop = self.inbound
        return bits_time_ps(hop.framing.wire_bytes(l3_bytes) * 8, hop.rate_bps)

    def order_path_ps(self, l3_bytes: np.ndarray) -> np.ndarray:
        """First bit at the host tap to the last byte at the arbiter, for a packet alone on the path."""
        unique, where = np.unique(np.asarray(l3_bytes, np.int64), return_inverse=True)
        path = self.scenario.order_path
        alone = np.array([int(path.transit([0], [int(size)]).last_bit(path.end)[0]) for size in unique], np.int64)
        return alone[where] + self.arbiter_rx_ps


def _ps_to_ns(ps: np.ndarray) -> np.ndarray:
    return np.floor_divide(ps, PS_PER_NS)


@dataclass
class TapCapture:
    """Per frame of the run's capture: which tap(s) it goes to and when."""
    kinds: dict[str, int]                # frames per kind: md, to_venue, from_venue
    order_l3_header_bytes: int           # IPv4 + TCP header of the engine's data segments
    frames: PacketBatch                  # the loopback frames that were kept
    host_ns: np.ndarray
    host_direction: np.ndarray
    exchange: np.ndarray                 # indices into frames that the exchange tap sees
    exchange_ns: np.ndarray


def build_taps(raw: PacketBatch, linktypes: list[int], scenario: Scenario, feed_ports, gateway_ports,
               md_seq: np.ndarray, md_transit_ps: np.ndarray, kernel_tx_ns: np.ndarray, md_format=None) -> TapCapture:
    """raw: the loopback capture, both copies of each packet (outgoing and incoming);
    md_seq/md_transit_ps: every datagram the feed published, sorted by seq, and its simulated
    transit (first bit at the exchange to last bit at the host NIC); kernel_tx_ns: the engine's
    kernel TX stamps of its order sends (telemetry), which replace the tap's stamp of their frames.

    MD frames are taken from the incoming copy: its stamp is the kernel RX stamp the engine's socket
    got. Engine and venue TCP frames are taken from the outgoing copy (sent by that side)."""
    link = HostLink(scenario)
    table, seq = decode(raw, linktypes, md_seq=True)
    if md_format is not None and md_format.kernel_probe is None:    # many messages a packet: the first's seq
        seq = _first_seqs(raw, table, md_format)
    ok = table.status == OK
    incoming = raw.direction == INBOUND
    feed = ok & (table.proto == PROTO_UDP) & np.isin(table.dst_port, list(feed_ports)) & incoming
    tcp = ok & (table.proto == PROTO_TCP) & ~incoming
    to_venue = tcp & np.isin(table.dst_port, list(gateway_ports))
    from_venue = tcp & np.isin(table.src_port, list(gateway_ports))
    keep = np.flatnonzero(feed | to_venue | from_venue)
    stamp = table.ts_ns[keep].copy()
    l3 = table.ip_len[keep].astype(np.int64)
    out = to_venue[keep]
    restamped = _restamp_sends(stamp, out & (table.payload_len[keep] > 0), np.asarray(kernel_tx_ns, np.int64))
    host_ps = np.where(out, link.nic_tx_ps, -(link.wire_in_ps(l3) + link.nic_rx_ps))
    host_ns = stamp + _ps_to_ns(host_ps)

    is_md = feed[keep]
    md_here = seq[keep][is_md].astype(np.uint64)
    if len(md_seq):
        at = np.searchsorted(md_seq, md_here).clip(0, len(md_seq) - 1)
        found = md_seq[at] == md_here
        transit = np.where(found, md_transit_ps[at], 0)
    else:
        found, transit = np.zeros(len(md_here), bool), np.zeros(len(md_here), np.int64)
    md_exchange_ns = stamp[is_md] - _ps_to_ns(link.nic_rx_ps + transit)

    base = int(host_ns[out].min()) if out.any() else 0
    path = scenario.order_path
    carried = path.transit((host_ns[out] - base) * PS_PER_NS, l3[out])
    arbiter_ns = base + _ps_to_ns(carried.last_bit(path.end) + link.arbiter_rx_ps)

    data_segments = out & (table.payload_len[keep] > 0)
    header = table.ip_len[keep][data_segments].astype(np.int64) - table.payload_len[keep][data_segments]
    frames = PacketBatch(raw.data, raw.offset[keep], raw.caplen[keep], raw.wire_len[keep], stamp,
                         np.zeros(len(keep), np.uint16), np.zeros(len(keep), np.int8))
    return TapCapture(
        kinds={"md": int(is_md.sum()), "md_unscheduled": int((~found).sum()), "to_venue": int(out.sum()),
               "to_venue_data": int(data_segments.sum()), "to_venue_kernel_tx_stamped": restamped,
               "from_venue": int((~out & ~is_md).sum())},
        order_l3_header_bytes=int(np.median(header)) if len(header) else 0,
        frames=frames, host_ns=host_ns, host_direction=np.where(out, OUTBOUND, INBOUND).astype(np.int8),
        exchange=np.concatenate([np.flatnonzero(is_md), np.flatnonzero(out)]),
        exchange_ns=np.concatenate([md_exchange_ns, arbiter_ns]))


def _first_seqs(raw: PacketBatch, table, md_format) -> np.ndarray:
    """Per packet, the seq of the first message of `md_format` in its UDP payload; -1 where none."""
    seq = np.full(len(table), -1, np.int64)
    rows = np.flatnonzero((table.status == OK) & (table.proto == PROTO_UDP))
    found = md_format.messages(raw.data, table.payload_offset[rows], table.payload_caplen[rows])
    datagrams, first = np.unique(found.datagram, return_index=True)
    seq[rows[datagrams]] = found.seq[first]
    return seq


def _restamp_sends(stamp: np.ndarray, sends: np.ndarray, kernel_tx_ns: np.ndarray) -> int:
    """Give each engine data frame the kernel TX stamp of its send(), where the engine has it.

    On lo the capture's tap sees a frame just before the driver takes the TX stamp, in the same
    call: the frame of a TX stamp is the last data frame tapped at or before it, within
    SEND_MATCH_NS. Returns how many frames were restamped."""
    rows = np.flatnonzero(sends)
    order = rows[np.argsort(stamp[rows], kind="stable")]
    tapped = stamp[order]
    tx = np.sort(kernel_tx_ns[kernel_tx_ns > 0])
    at = np.searchsorted(tapped, tx, side="right") - 1
    close = (at >= 0) & (tx - tapped[at.clip(0)] <= SEND_MATCH_NS) if len(tapped) else np.zeros(len(tx), bool)
    stamp[order[at[close]]] = tx[close]
    return int(np.count_nonzero(close))


def tap_interfaces(scenario: Scenario) -> list[Interface]:
    link = HostLink(scenario)
    path = scenario.order_path
    arbiter = path.end.name
    return [
        Interface(1, "1e-9", 0, HOST_TAP,
                  f"hardware convention: first bit of every frame at the host's link "
                  f"({format_rate(link.inbound.rate_bps)} in, {format_rate(link.outbound.rate_bps)} out, "
                  f"scenario {scenario.name}); inbound = loopback delivery - wire time - NIC rx latency, "
                  f"outbound = kernel TX + NIC tx latency"),
        Interface(1, "1e-9", 0, EXCHANGE_TAP,
                  f"market data: first bit leaving the exchange ({scenario.md_path.start.name}); "
                  f"engine segments: LAST BYTE at the arbiter ({arbiter}), simulated along the order path"),
    ]


def write_taps(path, taps: TapCapture, scenario: Scenario, comment: str) -> int:
    """Write both taps, merged in stamp order, owner-only. Returns frames written."""
    n_host, n_exchange = len(taps.host_ns), len(taps.exchange)
    index = np.concatenate([np.arange(n_host), taps.exchange])
    stamps = np.concatenate([taps.host_ns, taps.exchange_ns])
    interface = np.concatenate([np.zeros(n_host, np.int64), np.ones(n_exchange, np.int64)])
    direction = np.concatenate([taps.host_direction, np.zeros(n_exchange, np.int8)])
    order = np.lexsort((interface, stamps))
    f = taps.frames
    frames = PacketBatch(f.data, f.offset[index][order], f.caplen[index][order], f.wire_len[index][order],
                         stamps[order], interface[order].astype(np.uint16), direction[order])
    with PcapngWriter(path, tap_interfaces(scenario), comment=comment) as writer:
        writer.write_batch(frames.interface, frames.ts_ns, frames, frames.direction)
    return len(order)
