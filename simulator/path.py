"""Elements, paths and the transit of packets along a path.

A path is a list of elements in travel order: links and channels carry bits;
switches, modems and hosts decide when a frame may start on the next link;
taps name places where first and last bits are observed.

A path compiles to *hops*. A hop is one transmitter and the medium it drives:

    eligible  = when the frame may start (source: its ready time;
                store-and-forward: last bit in + latency;
                cut-through: first bit in + cut_through_bytes at the ingress rate + latency)
    start     = FIFO at the transmitter: max(eligible, previous frame's end + gap)
    first bit at the far end = start + propagation; last bit = that + wire time

`transit` does this for many packets at once with numpy. The FIFO is the
Lindley recursion in its prefix-max closed form (docs/concepts.md, docs/scenarios.md):
    start = C + maximum.accumulate(A - C), C = exclusive cumsum of (service + gap).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.errors import SimulatorError
from simulator.framing import Framing
from simulator.units import bits_time_ps

ABSENT = np.iinfo(np.int64).min  # tx_start of a packet that does not use a hop
MAX_IP_DATAGRAM = 65535

SOURCE, STORE_AND_FORWARD, CUT_THROUGH, PASSIVE = "source", "store-and-forward", "cut-through", "passive"


# -- elements (what a scenario file describes) --------------------------------------------

@dataclass(frozen=True)
class Link:
    name: str
    rate_bps: int
    delay_ps: int
    framing: Framing


@dataclass(frozen=True)
class Channel:
    """A rate-limited serial stretch whose modems store and forward whole frames."""
    name: str
    rate_bps: int
    delay_ps: int
    framing: Framing
    latency_ps: int = 0  # each modem's latency


@dataclass(frozen=True)
class Switch:
    name: str
    mode: str = STORE_AND_FORWARD
    latency_ps: int = 0
    cut_through_bytes: int = 64


@dataclass(frozen=True)
class Host:
    name: str
    serdes_rx_ps: int = 0
    serdes_tx_ps: int = 0
    stack_rx_ps: int = 0
    stack_tx_ps: int = 0

    @property
    def rx_ps(self) -> int:
        return self.serdes_rx_ps + self.stack_rx_ps

    @property
    def tx_ps(self) -> int:
        return self.serdes_tx_ps + self.stack_tx_ps


@dataclass(frozen=True)
class Tap:
    name: str


Element = Link | Channel | Switch | Host | Tap


# -- compiled path ------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    name: str            # the link or channel
    rate_bps: int
    delay_ps: int
    framing: Framing
    forward: str         # how the transmitter decides: source, store-and-forward, cut-through, passive
    node: str            # the transmitting node ("" for the source)
    latency_ps: int = 0
    cut_through_ps: int = 0  # cut_through_bytes at the ingress rate


@dataclass(frozen=True)
class Point:
    name: str
    hop: int
    at_end: bool  # False: where the hop's transmitter puts bits on; True: the hop's far end


@dataclass
class Path:
    name: str
    hops: list[Hop]
    points: list[Point]
    sender: Host | None = None
    receiver: Host | None = None
    notes: list[str] = field(default_factory=list)

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise SimulatorError(f"path {self.name!r} has no point {name!r}; points: {', '.join(p.name for p in self.points)}")

    @property
    def start(self) -> Point:
        return self.points[0]

    @property
    def end(self) -> Point:
        return self.points[-1]

    def transit(self, ready_ps, l3_bytes, enter=None, leave=None) -> "Transit":
        """Carry packets along the path. All arguments are arrays of one length.

        ready_ps: when each packet's first bit may start on its entry hop.
        l3_bytes: the IP datagram size; each hop adds its own framing.
        enter/leave: first and last hop index each packet uses (cross traffic
        joins and leaves mid-path); default: the whole path.
        """
        ready = np.asarray(ready_ps, dtype=np.int64)
        size = np.asarray(l3_bytes, dtype=np.int64)
        n, n_hops = len(ready), len(self.hops)
        if n and (size.min() < 0 or size.max() > MAX_IP_DATAGRAM):
            raise SimulatorError(f"IP datagram sizes must be 0..{MAX_IP_DATAGRAM} bytes")
        whole_path = enter is None and leave is None
        enter = np.zeros(n, np.int64) if enter is None else np.asarray(enter, np.int64)
        leave = np.full(n, n_hops - 1, np.int64) if leave is None else np.asarray(leave, np.int64)
        tx_start = np.full((n_hops, n), ABSENT, dtype=np.int64)
        service = np.zeros((n_hops, n), dtype=np.int64)
        sizes = np.arange(int(size.max()) + 1 if n else 1, dtype=np.int64)
        for h, hop in enumerate(self.hops):
            if whole_path:
                members = slice(None)
                eligible = ready if h == 0 else _eligible(hop, tx_start[h - 1], service[h - 1], self.hops[h - 1].delay_ps)
            else:
                members = np.flatnonzero((enter <= h) & (leave >= h))
                eligible = ready[members].copy()
                carried = enter[members] < h
                if carried.any():
                    upstream = members[carried]
                    eligible[carried] = _eligible(hop, tx_start[h - 1, upstream], service[h - 1, upstream],
                                                  self.hops[h - 1].delay_ps)
            # wire time depends only on the datagram size: a table lookup beats a division per packet
            wire_time = bits_time_ps(hop.framing.wire_bytes(sizes) * 8, hop.rate_bps)[size[members]]
            gap_time = bits_time_ps(hop.framing.gap * 8, hop.rate_bps)
            tx_start[h, members] = fifo_start(eligible, wire_time + gap_time)
            service[h, members] = wire_time
        return Transit(self, tx_start, service, size)


def _eligible(hop: Hop, upstream_start, upstream_service, upstream_delay):
    """When frames arriving over the previous hop may start on this one."""
    first_in = upstream_start + upstream_delay
    if hop.forward == PASSIVE:
        return first_in
    last_in = first_in + upstream_service
    if hop.forward == CUT_THROUGH:
        return np.minimum(first_in + hop.cut_through_ps, last_in) + hop.latency_ps
    return last_in + hop.latency_ps


def fifo_start(eligible: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """Start times of frames served FIFO in order of eligibility (ties: arrival order).

    occupancy = wire time + inter-frame gap. Lindley's recursion
    start[k] = max(eligible[k], start[k-1] + occupancy[k-1]) in prefix-max form.
    """
    n = len(eligible)
    if n == 0:
        return eligible.astype(np.int64)
    in_order = n == 1 or bool(np.all(eligible[1:] >= eligible[:-1]))
    order = None if in_order else np.argsort(eligible, kind="stable")
    a = eligible if in_order else eligible[order]
    t = occupancy if in_order else occupancy[order]
    c = np.empty(n, np.int64)
    c[0] = 0
    np.cumsum(t[:-1], out=c[1:])
    start = c + np.maximum.accumulate(a - c)
    if in_order:
        return start
    out = np.empty(n, np.int64)
    out[order] = start
    return out


@dataclass
class Transit:
    """Where every packet's bits are: per hop, when it started and how long it took."""
    path: Path
    tx_start: np.ndarray  # (hops, packets) int64 ps; ABSENT where a packet skips a hop
    service: np.ndarray   # (hops, packets) int64 ps: wire time of the frame on that hop
    l3_bytes: np.ndarray

    def _point(self, point: Point | str) -> Point:
        return self.path.point(point) if isinstance(point, str) else point

    def first_bit(self, point: Point | str) -> np.ndarray:
        p = self._point(point)
        return self.tx_start[p.hop] + (self.path.hops[p.hop].delay_ps if p.at_end else 0)

    def last_bit(self, point: Point | str) -> np.ndarray:
        p = self._point(point)
        return self.first_bit(p) + self.service[p.hop]

    def byte_arrival(self, point: Point | str, l3_byte: int) -> np.ndarray:
        """When the last bit of byte `l3_byte` of the IP datagram passes `point`."""
        p = self._point(point)
        hop = self.path.hops[p.hop]
        bits = (hop.framing.l3_offset() + l3_byte + 1) * 8
        return self.first_bit(p) + bits_time_ps(bits, hop.rate_bps)


# -- compilation --------------------------------------------------------------------------

def compile_path(name: str, elements: list[Element]) -> Path:
    """Turn elements in travel order into hops and points. Raises SimulatorError."""
    hops: list[Hop] = []
    taps: list[Point] = []
    notes: list[str] = []
    sender = receiver = None
    pending: tuple[str, str, int, int] | None = (SOURCE, "", 0, 0)  # forward, node, latency, ct bytes
    after_switch = False  # a tap right after a switch sits where the switch transmits

    for i, el in enumerate(elements):
        where = f"{name}[{i}]"
        last = i == len(elements) - 1
        if isinstance(el, Host):
            if i == 0:
                sender = el
            elif last:
                receiver = el
            else:
                raise SimulatorError(f"{where}: a host may only start or end a path")
        elif isinstance(el, Tap):
            if not hops:
                taps.append(Point(el.name, 0, False))
            elif after_switch:
                taps.append(Point(el.name, len(hops), False))
            else:
                taps.append(Point(el.name, len(hops) - 1, True))
        elif isinstance(el, Switch):
            if not hops or after_switch:
                raise SimulatorError(f"{where}: a switch must follow a link or channel")
            if pending is None:
                pending = (el.mode, el.name, el.latency_ps, el.cut_through_bytes)
            else:  # straight after a channel: its modem has stored the whole frame already
                if el.mode == CUT_THROUGH:
                    notes.append(f"{el.name}: fed by a store-and-forward modem, so cut-through gains nothing")
                pending = (STORE_AND_FORWARD, el.name, pending[2] + el.latency_ps, 0)
            after_switch = True
        elif isinstance(el, (Link, Channel)):
            if isinstance(el, Channel) and pending is None:
                pending = (STORE_AND_FORWARD, f"{el.name} modem", el.latency_ps, 0)
            if pending is None:  # a link straight after a link: the bits just continue
                if el.rate_bps != hops[-1].rate_bps or el.framing != hops[-1].framing:
                    raise SimulatorError(f"{where}: rate or framing changes between links with no "
                                         "switch or channel between them")
                pending = (PASSIVE, "", 0, 0)
            hops.append(_hop(el, pending, hops[-1] if hops else None, notes))
            pending = (STORE_AND_FORWARD, f"{el.name} modem", el.latency_ps, 0) if isinstance(el, Channel) else None
            after_switch = False
        else:  # pragma: no cover - the loader only builds the types above
            raise SimulatorError(f"{where}: unknown element {el!r}")

    if not hops:
        raise SimulatorError(f"{name}: a path needs at least one link or channel")
    if after_switch:
        raise SimulatorError(f"{name}: the switch at the end has no link to transmit onto")
    start = Point(sender.name if sender else f"{name}-start", 0, False)
    end = Point(receiver.name if receiver else f"{name}-end", len(hops) - 1, True)
    points = [start] if not taps or (taps[0].hop, taps[0].at_end) != (0, False) else []
    points += taps
    if (points[-1].hop, points[-1].at_end) != (end.hop, end.at_end):
        points.append(end)
    return Path(name, hops, points, sender, receiver, notes)


def _hop(el: Link | Channel, pending, previous: Hop | None, notes: list[str]) -> Hop:
    forward, node, latency, ct_bytes = pending
    cut_through_ps = 0
    if forward == CUT_THROUGH:
        if el.rate_bps > previous.rate_bps:
            notes.append(f"{node}: cut-through onto faster {el.name} is impossible; "
                         "falls back to store-and-forward")
            forward = STORE_AND_FORWARD
        else:
            cut_through_ps = bits_time_ps(ct_bytes * 8, previous.rate_bps)
    return Hop(el.name, el.rate_bps, el.delay_ps, el.framing, forward, node, latency, cut_through_ps)
