"""Speculative-send strategies and the implied tick-to-trade of one trigger.

One market-data frame crosses md_path. The engine decides `processing` after
the frame is available, and the order crosses order_path to the arbiter, where
its *last* byte counts. The zero-latency baseline is the whole order with its
first bit leaving the host tap at t_MD (impossible: the frame has not arrived).

    implied tick-to-trade = arbiter arrival - baseline's arbiter arrival
                          = wait for frame + processing + host tx - sum of per-hop savings

The per-hop savings telescope: at each hop end, compare how long the baseline
and the strategy took since the previous hop end, for the message's last byte.
So the decomposition always sums to the total, and a negative saving (a cost,
such as reassembly) shows where it arises.

Send-side strategies choose which parts of the order go when; `early-read` is
receive-side and combines with any of them: "tcp-prefix+early-read".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.errors import SimulatorError
from simulator.framing import IPV4_HEADER
from simulator.path import Host, Path, Transit
from simulator.scenario import Order, Scenario
from simulator.units import bits_time_ps

SEND_SIDE = ("none", "tcp-prefix", "eth-abort", "ip-fragment", "tcp-out-of-order")
RECEIVE_SIDE = ("early-read",)
STRATEGIES = SEND_SIDE + RECEIVE_SIDE

DESCRIPTIONS = {
    "none": "the whole order in one packet, sent at the decision",
    "tcp-prefix": "the decision-free prefix goes ahead as its own TCP segment; the rest at the decision",
    "eth-abort": "the frame starts serialising before the decision; no trade = corrupt FCS, frame dies at the next hop",
    "ip-fragment": "the first IP fragment (8-byte aligned) goes ahead; the receiver reassembles",
    "tcp-out-of-order": "a decision-free tail goes ahead with a later sequence number; the rest at the decision",
    "early-read": "receive side: decide once early_read_bytes of the MD payload have arrived, not the whole frame",
}

NO_HOST = Host("host")


@dataclass(frozen=True)
class Part:
    """One packet of the order."""
    label: str
    l3_bytes: int
    early: bool = False   # sent ahead of the decision
    lead_ps: int = 0      # starts this long before the decision is ready (eth-abort)


@dataclass(frozen=True)
class SendPlan:
    parts: list[Part]
    extra_header_bytes: int = 0
    killed_frame_wire_ps: int = 0   # wire time a speculative frame wastes when there is no trade
    reassembly_ps: int = 0


@dataclass
class PointTime:
    name: str
    first_bit_ps: int
    last_bit_ps: int


@dataclass
class FrameTimeline:
    label: str
    l3_bytes: int
    points: list[PointTime]


@dataclass
class StrategyResult:
    name: str
    implied_tick_to_trade_ps: int
    arbiter_arrival_ps: int
    baseline_arrival_ps: int
    tick_to_trade_ps: int                 # as the host tap sees it: order first bit - t_MD
    decision_ps: int
    wait_for_frame_ps: int
    processing_ps: int
    host_tx_ps: int
    savings_ps: dict[str, int]            # per hop (and arbiter), in travel order
    costs: dict[str, int]
    frames: list[FrameTimeline]

    @property
    def decomposition(self) -> dict:
        return {
            "wait_for_frame_ps": self.wait_for_frame_ps,
            "processing_ps": self.processing_ps,
            "host_tx_ps": self.host_tx_ps,
            "savings_ps": dict(self.savings_ps),
            "costs": dict(self.costs),
        }


@dataclass
class Simulation:
    scenario: Scenario
    t_md_ps: int
    flows: dict[str, list[FrameTimeline]]
    strategies: dict[str, StrategyResult] = field(default_factory=dict)


def parse_strategy(name: str) -> tuple[str, bool]:
    """'tcp-prefix+early-read' -> ('tcp-prefix', True)."""
    parts = [p.strip() for p in name.split("+")]
    early_read = "early-read" in parts
    send = [p for p in parts if p != "early-read"]
    for p in parts:
        if p not in STRATEGIES:
            raise SimulatorError(f"unknown strategy {p!r} (one of: {', '.join(STRATEGIES)}; "
                                 "combine a send side with early-read using '+')")
    if len(send) > 1 or len(parts) != len(set(parts)):
        raise SimulatorError(f"strategy {name!r}: combine at most one send-side strategy with early-read")
    return (send[0] if send else "none"), early_read


def default_strategies(scenario: Scenario) -> list[str]:
    """Every strategy the scenario supports: send-side ones need a prefix (or an out-of-order span),
    early-read needs the MD field it reads early."""
    if scenario.order_path is None:
        return []
    chosen = ["none"]
    if scenario.order.prefix_bytes or scenario.order.ooo_bytes:
        chosen += [s for s in STRATEGIES if s not in ("none", "early-read")]
    if scenario.market_data.early_read_bytes:
        chosen += ["early-read"] + (["tcp-prefix+early-read"] if scenario.order.prefix_bytes else [])
    return chosen


def plan_send(kind: str, order: Order, path: Path) -> SendPlan:
    whole = order.l3_bytes
    if kind == "none":
        return SendPlan([Part("order", whole)])
    if kind == "tcp-out-of-order":
        span = order.ooo_bytes or order.prefix_bytes
        if span is None:
            raise SimulatorError("tcp-out-of-order needs [order] ooo_bytes or prefix_bytes")
        header = order.transport.header
        return SendPlan([Part("tail", header + span, early=True), Part("rest", whole - span)], header)
    prefix = order.prefix_bytes
    if prefix is None:
        raise SimulatorError(f"{kind} needs [order] prefix_bytes (the decision-free prefix)")
    header = order.transport.header
    if kind == "tcp-prefix":
        return SendPlan([Part("prefix", header + prefix, early=True), Part("rest", whole - prefix)], header)
    if kind == "ip-fragment":
        l4 = whole - IPV4_HEADER                            # transport header + payload
        first = (header - IPV4_HEADER + prefix) // 8 * 8    # fragment offsets count 8-byte units
        if first <= 0:
            raise SimulatorError("ip-fragment: the prefix is too short to fill an 8-byte fragment")
        return SendPlan([Part("fragment-1", IPV4_HEADER + first, early=True),
                         Part("fragment-2", IPV4_HEADER + l4 - first)],
                        IPV4_HEADER, reassembly_ps=order.reassembly_ps)
    if kind == "eth-abort":
        hop = path.hops[0]
        before_decision = hop.framing.l3_offset() + header + prefix
        lead = before_decision * 8 * 10**12 // hop.rate_bps   # floor: the decision byte never leaves early
        killed = bits_time_ps(hop.framing.wire_bytes(whole) * 8, hop.rate_bps)
        return SendPlan([Part("order", whole, lead_ps=lead)], killed_frame_wire_ps=killed)
    raise SimulatorError(f"unknown send-side strategy {kind!r}")


def simulate(scenario: Scenario, strategies: list[str] | tuple[str, ...] = ()) -> Simulation:
    md = scenario.md_path
    market = scenario.market_data
    md_transit = md.transit([0], [market.l3_bytes])
    t_md = int(md_transit.first_bit(md.end)[0])
    flows = {"md": [_timeline("market-data", md_transit, 0)]}
    for name, path in scenario.paths.items():
        if name not in ("md", "order"):
            flows[name] = [_timeline("market-data", path.transit([0], [market.l3_bytes]), 0)]
    sim = Simulation(scenario, t_md, flows)
    if scenario.order_path is None:
        if strategies:
            raise SimulatorError(f"{scenario.source}: strategies need an order_path and [order]")
        return sim
    for name in strategies:
        sim.strategies[name] = _run_strategy(scenario, name, md_transit, t_md)
    none = sim.strategies.get("none") or _run_strategy(scenario, "none", md_transit, t_md)
    flows["order"] = none.frames
    return sim


def _run_strategy(scenario: Scenario, name: str, md_transit: Transit, t_md: int) -> StrategyResult:
    send_kind, early_read = parse_strategy(name)
    md, order_path, order = scenario.md_path, scenario.order_path, scenario.order
    receiver, sender = md.receiver or NO_HOST, order_path.sender or NO_HOST
    arbiter = order_path.receiver or NO_HOST

    if early_read:
        market = scenario.market_data
        if market.early_read_bytes is None:
            raise SimulatorError("early-read needs [market_data] early_read_bytes")
        point = md.point(market.early_read_point) if market.early_read_point else md.end
        last_needed = market.transport.header + market.early_read_bytes - 1
        available = int(md_transit.byte_arrival(point, last_needed)[0]) + receiver.rx_ps
    else:
        available = int(md_transit.last_bit(md.end)[0]) + receiver.rx_ps
    decision = available + scenario.processing_ps
    ready = decision + sender.tx_ps

    baseline = order_path.transit([t_md], [order.l3_bytes])
    base_done = _done_per_hop(baseline)
    baseline_arrival = int(base_done[-1]) + arbiter.rx_ps

    plan = plan_send(send_kind, order, order_path)
    early = [p for p in plan.parts if p.early]
    prime_lead = order.prime_lead_ps
    if prime_lead is None and early:
        alone = order_path.transit([0] * len(early), [p.l3_bytes for p in early])
        prime_lead = 2 * int(_done_per_hop(alone)[-1])   # early parts have long cleared the path
    departures = [min(t_md, ready) - prime_lead if p.early else ready - p.lead_ps for p in plan.parts]
    transit = order_path.transit(departures, [p.l3_bytes for p in plan.parts])
    done = _done_per_hop(transit)
    arrival = int(done[-1]) + arbiter.rx_ps + plan.reassembly_ps

    savings = {}
    base_prev, prev = t_md, ready
    for h, hop in enumerate(order_path.hops):
        savings[hop.name] = (int(base_done[h]) - base_prev) - (int(done[h]) - prev)
        base_prev, prev = int(base_done[h]), int(done[h])
    if plan.reassembly_ps:
        savings[f"{arbiter.name} reassembly"] = -plan.reassembly_ps

    deciding = next(i for i, p in enumerate(plan.parts) if not p.early)
    start = order_path.start
    hop0 = order_path.hops[0]
    wire0 = sum(hop0.framing.wire_bytes(p.l3_bytes) for p in plan.parts) - hop0.framing.wire_bytes(order.l3_bytes)
    costs = {
        "extra_header_bytes": plan.extra_header_bytes,
        "extra_wire_bytes_first_hop": wire0,
        "parts_sent_early": len(early),
        "killed_frame_wire_ps": plan.killed_frame_wire_ps,
    }
    frames = [_timeline(p.label, transit, i) for i, p in enumerate(plan.parts)]
    return StrategyResult(
        name=name,
        implied_tick_to_trade_ps=arrival - baseline_arrival,
        arbiter_arrival_ps=arrival,
        baseline_arrival_ps=baseline_arrival,
        tick_to_trade_ps=int(transit.first_bit(start)[deciding]) - t_md,
        decision_ps=decision,
        wait_for_frame_ps=available - t_md,
        processing_ps=scenario.processing_ps,
        host_tx_ps=sender.tx_ps,
        savings_ps=savings,
        costs=costs,
        frames=frames,
    )


def _done_per_hop(transit: Transit) -> np.ndarray:
    """When the message's last byte reaches each hop's far end (latest of its packets)."""
    delay = np.array([h.delay_ps for h in transit.path.hops], dtype=np.int64)
    return (transit.tx_start + transit.service).max(axis=1) + delay


def _timeline(label: str, transit: Transit, index: int) -> FrameTimeline:
    points = [PointTime(p.name, int(transit.first_bit(p)[index]), int(transit.last_bit(p)[index]))
              for p in transit.path.points]
    return FrameTimeline(label, int(transit.l3_bytes[index]), points)
