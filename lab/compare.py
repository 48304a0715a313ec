"""`lab compare`: every speculative-send strategy side by side, over many triggers.

Market-data messages leave the exchange at a seeded Poisson rate and cross the MD
path (FIFO). A seeded share of them trigger an order. Per strategy, every part of
every order (prefix, rest, fragments, killed frames) crosses the order path
together, so one order queues behind the previous one. Per trigger:

    implied tick-to-trade = the order's last byte at the arbiter
                            - the baseline's (the whole order, alone, first bit at t_MD)

Sensitivity sweeps use `simulator.strategies.simulate` (one trigger) on scenarios
changed with dataclasses.replace. docs/compare.md defines every figure.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

from engine.gateway import STRATEGIES as REAL_STRATEGIES      # what the real engine's gateway sends
from lab.analysis.exports import open_private
from lab.errors import LabError
from lab.percentiles import summarize
from lab.table import render
from simulator.path import Host, Link, Path, Switch, compile_path
from simulator.scenario import Scenario, load_scenario
from simulator.strategies import NO_HOST, default_strategies, parse_strategy, plan_send, simulate
from simulator.units import format_ps, format_rate

LINE_RATE_FACTORS = (Fraction(1, 2), Fraction(1), Fraction(2), Fraction(4), Fraction(8))
PREFIX_SIZES = (5, 10, 20, 40, 80, 160)
HOP_COUNTS = range(1, 9)
HOP_RATE_BPS = 100_000_000


@dataclass(frozen=True)
class CompareOptions:
    scenario: str
    strategies: list[str] | tuple[str, ...] | None = None   # default: every one the scenario supports
    messages: int = 1000
    trade_share: float = 0.3
    seed: int = 1
    rate: float | None = None          # MD messages per second leaving the exchange; None: 50 % of the MD path
    real: bool = False                 # add real-engine runs of none and tcp-prefix (lab run)
    out: str | None = None             # where the real runs' files go; None: a temporary directory


@dataclass
class Schedule:
    departures_ps: np.ndarray   # each MD message leaves the exchange
    triggers: np.ndarray        # bool per MD message: it triggers an order
    rate: float                 # MD messages per second
    run_ps: int                 # the schedule's length: the sum of its gaps


@dataclass
class StrategyRun:
    name: str
    implied_ns: np.ndarray      # per trigger
    costs: dict = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        return summarize(self.implied_ns)


@dataclass
class Comparison:
    scenario: str
    messages: int
    trade_share: float
    seed: int
    rate: float
    triggers: int
    strategies: list[StrategyRun]      # simulated, by p50 (most negative first), then real ones
    sweeps: dict[str, list[dict]]

    def savings_ns(self, run: StrategyRun) -> int:
        """p50 of none (real:none for real runs) minus p50 of this run."""
        base = "real:none" if run.name.startswith("real:") else "none"
        reference = next(r for r in self.strategies if r.name == base)
        return reference.summary["p50"] - run.summary["p50"]

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario,
            "messages": self.messages,
            "trade_share": self.trade_share,
            "seed": self.seed,
            "rate_msgs_per_s": self.rate,
            "triggers": self.triggers,
            "strategies": [{"name": r.name, "implied_tick_to_trade_ns": r.summary,
                            "savings_ns": self.savings_ns(r), "costs": r.costs} for r in self.strategies],
            "sweeps": self.sweeps,
        }

    def table(self) -> str:
        out = [f"{self.scenario}: {self.messages} MD messages at {self.rate:.6g}/s, {self.triggers} triggers "
               f"(trade share {self.trade_share}, seed {self.seed}); implied tick-to-trade per trigger"]
        rows = []
        for r in self.strategies:
            s, c = r.summary, r.costs
            rows.append([r.name] + [_ns_text(s[k]) for k in ("min", "p50", "p90", "p99", "max")]
                        + [_ns_text(self.savings_ns(r)), c.get("extra_wire_bytes", ""),
                           c.get("killed_frames_per_1000_md", ""), c.get("link_occupancy", ""),
                           c.get("never_completed_share", "")])
        out.append(render(["strategy", "min", "p50", "p90", "p99", "max", "savings (p50)", "extra wire B",
                           "killed/1000 MD", "occupancy", "never completed"], rows))
        titles = {"line_rate": "savings against line rate (every order-path rate times factor)",
                  "prefix_bytes": "savings against prefix size (tcp-prefix)",
                  "early_read_bytes": "savings against early-read offset (early-read)",
                  "hops": f"savings against hop count (store-and-forward {format_rate(HOP_RATE_BPS)} hops)"}
        for key, title in titles.items():
            rows = self.sweeps[key]
            if not rows:
                continue
            names = list(rows[0]["savings_ns"])
            x = [k for k in rows[0] if k != "savings_ns"]
            out.append(f"\n{title}")
            out.append(render(x + names, [[row[k] for k in x] + [_ns_text(row["savings_ns"][n]) for n in names]
                                          for row in rows]))
        return "\n".join(out)


def compare(options: CompareOptions) -> Comparison:
    """Simulate every strategy over the same seeded MD schedule, run the sweeps, and (real) the engine."""
    _check(options)
    scenario = load_scenario(options.scenario)
    if scenario.order_path is None:
        raise LabError(f"scenario {scenario.name}: lab compare needs an order_path and [order]")
    names = list(dict.fromkeys(options.strategies or default_strategies(scenario)))
    for name in names:
        parse_strategy(name)
    if "none" not in names:                       # every saving is counted against none
        names.insert(0, "none")
    schedule = make_schedule(scenario, options.messages, options.trade_share, options.seed, options.rate)
    triggers = int(schedule.triggers.sum())
    if triggers == 0:
        raise LabError(f"no MD message triggered an order ({options.messages} messages, trade share "
                       f"{options.trade_share}); raise --messages or --trade-share")
    runs = sorted((run_strategy(scenario, name, schedule) for name in names),
                  key=lambda r: r.summary["p50"])
    sweeps = {"line_rate": line_rate_sweep(scenario, [n for n in names if n != "none"]),
              "prefix_bytes": prefix_sweep(scenario),
              "early_read_bytes": early_read_sweep(scenario),
              "hops": hop_sweep(scenario)}
    if options.real:
        runs += sorted(real_runs(options, schedule.rate), key=lambda r: r.summary["p50"])
    return Comparison(scenario.name, options.messages, options.trade_share, options.seed, schedule.rate,
                      triggers, runs, sweeps)


def _check(options: CompareOptions) -> None:
    if options.messages < 1:
        raise LabError(f"--messages {options.messages}: must be >= 1")
    if not 0 < options.trade_share <= 1:
        raise LabError(f"--trade-share {options.trade_share}: must be > 0 and <= 1")
    if options.rate is not None and not (math.isfinite(options.rate) and options.rate > 0):
        raise LabError(f"--rate {options.rate}: must be > 0 messages per second")


# -- many triggers ------------------------------------------------------------------------

def make_schedule(scenario: Scenario, messages: int, trade_share: float, seed: int,
                  rate: float | None) -> Schedule:
    """Seeded exponential gaps at `rate` (default: half the MD path's capacity for this frame)
    and a seeded draw of which messages trigger an order."""
    if rate is None:
        alone = scenario.md_path.transit([0], [scenario.market_data.l3_bytes])
        rate = 0.5 * 10**12 / int(alone.service.max())
    rng = np.random.default_rng(seed)
    gaps = np.rint(rng.exponential(10**12 / rate, messages)).astype(np.int64)
    triggers = rng.random(messages) < trade_share
    departures = np.cumsum(gaps)
    return Schedule(departures - gaps[0], triggers, rate, int(departures[-1]))


def run_strategy(scenario: Scenario, name: str, schedule: Schedule) -> StrategyRun:
    """Every order of one strategy through the order path together; implied tick-to-trade per trigger."""
    send_kind, early_read = parse_strategy(name)
    md, path, order = scenario.md_path, scenario.order_path, scenario.order
    receiver, sender, arbiter = md.receiver or NO_HOST, path.sender or NO_HOST, path.receiver or NO_HOST

    md_sizes = np.full(len(schedule.departures_ps), scenario.market_data.l3_bytes)
    md_transit = md.transit(schedule.departures_ps, md_sizes)
    t_md = md_transit.first_bit(md.end)
    if early_read:
        market = scenario.market_data
        if market.early_read_bytes is None:
            raise LabError("early-read needs [market_data] early_read_bytes")
        point = md.point(market.early_read_point) if market.early_read_point else md.end
        available = md_transit.byte_arrival(point, market.transport.header + market.early_read_bytes - 1)
    else:
        available = md_transit.last_bit(md.end)
    ready = available + receiver.rx_ps + scenario.processing_ps + sender.tx_ps   # every MD message

    plan = plan_send(send_kind, order, path)
    early = [p for p in plan.parts if p.early]
    trig = np.flatnonzero(schedule.triggers)
    # early parts of the first order leave as `simulate` primes them; each later one right after
    # the previous order (the rest goes first: FIFO keeps ties in this order)
    lead = order.prime_lead_ps
    if lead is None and early:
        lead = 2 * int(path.transit([0] * len(early), [p.l3_bytes for p in early]).last_bit(path.end).max())
    first_prime = min(int(t_md[trig[0]]), int(ready[trig[0]])) - (lead or 0)
    primed = np.concatenate(([first_prime], ready[trig[:-1]]))
    departures = np.stack([primed if p.early else ready[trig] - p.lead_ps for p in plan.parts], axis=1)
    sizes = np.broadcast_to([p.l3_bytes for p in plan.parts], departures.shape)

    speculative = bool(early) or any(p.lead_ps for p in plan.parts)
    killed = np.flatnonzero(~schedule.triggers) if plan.killed_frame_wire_ps else np.zeros(0, np.int64)
    ready_all = np.concatenate((departures.ravel(), ready[killed] - plan.parts[0].lead_ps))
    size_all = np.concatenate((sizes.ravel(), np.full(len(killed), order.l3_bytes)))
    last_hop = len(path.hops) - 1
    leave = np.concatenate((np.full(departures.size, last_hop), np.zeros(len(killed), np.int64)))
    transit = path.transit(ready_all, size_all, leave=leave if len(killed) else None)

    arrival = transit.last_bit(path.end)[:departures.size].reshape(departures.shape).max(axis=1)
    arrival = arrival + arbiter.rx_ps + plan.reassembly_ps
    alone = path.transit([0], [order.l3_bytes])
    baseline = t_md[trig] + int(alone.last_bit(path.end)[0]) + arbiter.rx_ps
    implied_ns = _ps_to_ns(arrival - baseline)

    bottleneck = int(np.argmax(alone.service[:, 0]))       # where the whole order takes longest
    costs = {"extra_wire_bytes": _extra_wire_bytes(path, plan.parts, order.l3_bytes),
             "killed_frames_per_1000_md": round(1000 * len(killed) / len(schedule.triggers), 3),
             # a packet that skips a hop has service 0 there
             "link_occupancy": round(int(transit.service[bottleneck].sum()) / max(schedule.run_ps, 1), 6),
             "bottleneck_hop": path.hops[bottleneck].name,
             **_completion(len(schedule.triggers), len(trig), speculative)}
    return StrategyRun(name, implied_ns, costs)


def _extra_wire_bytes(path: Path, parts, whole_l3_bytes: int) -> int:
    """Wire bytes of an order's parts on the first hop beyond the whole order's."""
    framing = path.hops[0].framing
    return sum(framing.wire_bytes(p.l3_bytes) for p in parts) - framing.wire_bytes(whole_l3_bytes)


def _completion(messages: int, orders: int, speculative: bool) -> dict:
    """A speculative strategy has a message started on every MD message (any might trigger);
    only the triggers complete one. Otherwise only orders are started, and all complete."""
    started = messages if speculative else orders
    return {"started_messages": started, "completed_orders": orders,
            "never_completed_share": round((started - orders) / started, 6)}


def _ps_to_ns(ps):
    """Nearest ns (a half rounds up), for int ps scalars or arrays."""
    return (ps + 500) // 1000


# -- sensitivity sweeps (one trigger) ---------------------------------------------------

def single_savings_ns(scenario: Scenario, names: list[str]) -> dict[str, int]:
    """implied(none) - implied(name) for one trigger, in ns."""
    sim = simulate(scenario, ["none", *names])
    none = sim.strategies["none"].implied_tick_to_trade_ps
    return {n: int(_ps_to_ns(none - sim.strategies[n].implied_tick_to_trade_ps)) for n in names}


def with_order_path(scenario: Scenario, path: Path) -> Scenario:
    return replace(scenario, paths={**scenario.paths, "order": path})


def scale_rates(path: Path, factor: Fraction) -> Path:
    """Every link and channel rate of `path` times `factor` (rounded down to whole b/s)."""
    hops = [replace(h, rate_bps=int(h.rate_bps * factor), cut_through_ps=int(h.cut_through_ps / factor))
            for h in path.hops]
    return replace(path, hops=hops)


def line_rate_sweep(scenario: Scenario, names: list[str]) -> list[dict]:
    rows = []
    for factor in LINE_RATE_FACTORS:
        path = scale_rates(scenario.order_path, factor)
        rows.append({"factor": float(factor), "bottleneck_rate_bps": min(h.rate_bps for h in path.hops),
                     "savings_ns": single_savings_ns(with_order_path(scenario, path), names)})
    return rows


def prefix_sweep(scenario: Scenario) -> list[dict]:
    rows = []
    for prefix in (p for p in PREFIX_SIZES if p < scenario.order.payload_bytes):
        changed = replace(scenario, order=replace(scenario.order, prefix_bytes=prefix))
        rows.append({"prefix_bytes": prefix, "savings_ns": single_savings_ns(changed, ["tcp-prefix"])})
    return rows


def early_read_sweep(scenario: Scenario) -> list[dict]:
    payload = scenario.market_data.payload_bytes
    offsets = sorted({max(1, payload * quarter // 4) for quarter in range(5)})
    rows = []
    for offset in offsets:
        changed = replace(scenario, market_data=replace(scenario.market_data, early_read_bytes=offset))
        rows.append({"early_read_bytes": offset, "savings_ns": single_savings_ns(changed, ["early-read"])})
    return rows


def hop_sweep(scenario: Scenario) -> list[dict]:
    """The order path replaced by k store-and-forward 100 Mb/s hops (the scenario's first-hop
    framing, no switch latency, the same sender and arbiter): tcp-prefix percolation."""
    if scenario.order.prefix_bytes is None:
        return []
    own = scenario.order_path
    framing = own.hops[0].framing
    rows = []
    for k in HOP_COUNTS:
        elements = [own.sender or Host("host")]
        for i in range(1, k + 1):
            if i > 1:
                elements.append(Switch(f"switch-{i - 1}"))
            elements.append(Link(f"hop-{i}", HOP_RATE_BPS, 0, framing))
        elements.append(own.receiver or Host("arbiter"))
        path = compile_path("order", elements)
        rows.append({"hops": k, "savings_ns": single_savings_ns(with_order_path(scenario, path), ["tcp-prefix"])})
    return rows


# -- real engine runs -------------------------------------------------------------------

def real_runs(options: CompareOptions, rate: float) -> list[StrategyRun]:
    """`lab run` of none and tcp-prefix (imbalance-taker), measured."""
    from lab.run import RunOptions, measure_run, run   # the engine side loads only when asked for

    def one(folder: str, strategy: str) -> StrategyRun:
        result = run(RunOptions(scenario=options.scenario, strategy=strategy, messages=options.messages,
                                rate=rate, seed=options.seed, models=("imbalance-taker",),
                                out=os.path.join(folder, f"{strategy}.pcapng")))
        implied = measure_run(result.out, result.telemetry).rows["implied_tick_to_trade_ns"]
        if implied.size == 0:
            raise LabError(f"real:{strategy}: no trigger could be measured in {result.out}")
        return StrategyRun(f"real:{strategy}", implied.astype(np.int64))

    if options.out is not None:
        os.makedirs(options.out, exist_ok=True)
        return [one(options.out, s) for s in REAL_STRATEGIES]
    with tempfile.TemporaryDirectory(prefix="lab-compare-") as folder:
        return [one(folder, s) for s in REAL_STRATEGIES]


# -- text and plot ----------------------------------------------------------------------

def _ns_text(ns) -> str:
    return "-" if ns is None else format_ps(int(ns) * 1000)


def plot(comparison: Comparison, path: str) -> None:
    """A PNG: the CDF of implied tick-to-trade per strategy (top) and the four sweeps (below)."""
    if not str(path).lower().endswith(".png"):
        raise LabError(f"--plot {path}: the figure is written as PNG; name the file *.png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 8.5))
    grid = fig.add_gridspec(2, 4)
    cdf = fig.add_subplot(grid[0, :])
    for run in comparison.strategies:
        us = np.sort(run.implied_ns) / 1000.0
        cdf.step(us, np.arange(1, us.size + 1) / us.size, where="post", label=run.name,
                 ls="--" if run.name.startswith("real:") else "-")
    cdf.axvline(0, color="k", lw=0.8)
    cdf.set_xlabel("implied tick-to-trade (us); left of 0: negative latency")
    cdf.set_ylabel("fraction of triggers <= x")
    cdf.set_title(f"{comparison.scenario}: {comparison.triggers} triggers of {comparison.messages} MD messages",
                  fontsize=10, loc="left")
    cdf.legend(fontsize=8)
    panels = (("line_rate", "factor", "order-path rate x factor"), ("prefix_bytes", "prefix_bytes", "prefix bytes"),
              ("early_read_bytes", "early_read_bytes", "early-read offset (bytes)"), ("hops", "hops", "hops"))
    for column, (key, x, label) in enumerate(panels):
        ax = fig.add_subplot(grid[1, column])
        rows = comparison.sweeps[key]
        for name in (rows[0]["savings_ns"] if rows else ()):
            ax.plot([r[x] for r in rows], [r["savings_ns"][name] / 1000.0 for r in rows], marker="o", label=name)
        if key == "line_rate":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("savings vs none (us)")
        ax.legend(fontsize=7)
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with open_private(path, binary=True) as f:          # output files are owner-only
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
