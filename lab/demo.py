"""`lab demo`: the whole lab in one command, written to one folder with an HTML report.

1. The seed's KRX case, simulated: the space-time diagram and the -565 us arithmetic.
2. Every strategy compared in simulation for `krx-2008` and `modern-10g` (lab.compare).
3. The real engine through the simulated KRX wire (lab.run), `none` and `tcp-prefix`, and
   their measurement (lab.run.implied): a hardware-style pcapng, the telemetry, the
   implied tick-to-trade per stage. Without CAP_NET_RAW the capture is rebuilt from the
   sockets' own stamps, and the report says so.
4. `report.html`, which links every figure and says in plain words what each one shows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from engine.gateway import STRATEGIES as REAL_STRATEGIES      # what the real engine's gateway sends
from engine.protocol.registry import DEFAULT_MD, DEFAULT_ORDERS
from lab.compare import CompareOptions, compare, plot as plot_comparison
from lab.errors import LabError
from lab.report import write_report
from simulator.scenario import load_scenario
from simulator.strategies import simulate

SPACETIME_STRATEGIES = ["none", "tcp-prefix", "tcp-prefix+early-read"]
COMPARED = ("krx-2008", "modern-10g")
# (label, strategy, market-data protocol, order protocol): the lab's own with each strategy, and a real
# venue's pair with tcp-prefix: ITCH 5.0 in MoldUDP64 into the engine's L3 book, OUCH 4.2 (18 bytes primed)
REAL_RUNS = [*((s, s, DEFAULT_MD, DEFAULT_ORDERS) for s in REAL_STRATEGIES),
             ("tcp-prefix, ITCH 5.0 + OUCH 4.2", "tcp-prefix", "itch50", "ouch42")]


@dataclass
class DemoResult:
    out: str
    report: str
    krx: dict                                    # the KRX simulation: strategy -> implied ps
    comparisons: dict[str, dict] = field(default_factory=dict)     # scenario -> lab compare JSON
    real: dict[str, dict] = field(default_factory=dict)            # strategy -> lab measure --telemetry figures
    real_skipped: str | None = None
    capture: str | None = None                   # how the real runs were captured: packet or sockets
    files: dict[str, str] = field(default_factory=dict)


def run_demo(out: str, messages: int = 100, real: bool = True, say: Callable[[str], None] = lambda _: None) -> DemoResult:
    from lab.spacetime import plot_simulation      # matplotlib: only when drawing
    os.makedirs(out, mode=0o700, exist_ok=True)
    files = {}

    say("simulating the seed's KRX case (krx-2008)")
    sim = simulate(load_scenario("krx-2008"), SPACETIME_STRATEGIES)
    files["spacetime"] = os.path.join(out, "krx-2008-spacetime.png")
    plot_simulation(sim, files["spacetime"], SPACETIME_STRATEGIES)
    krx = {name: result.implied_tick_to_trade_ps for name, result in sim.strategies.items()}

    comparisons = {}
    for scenario in COMPARED:
        say(f"comparing every strategy in simulation: {scenario}")
        comparison = compare(CompareOptions(scenario=scenario, messages=max(messages, 200)))
        comparisons[scenario] = comparison.to_json()
        files[f"compare-{scenario}"] = os.path.join(out, f"compare-{scenario}.png")
        plot_comparison(comparison, files[f"compare-{scenario}"])
        _write_json(os.path.join(out, f"compare-{scenario}.json"), comparisons[scenario])

    result = DemoResult(out=out, report=os.path.join(out, "report.html"), krx=krx, comparisons=comparisons,
                        files=files)
    if real:
        _real_runs(result, messages, say)
    else:
        result.real_skipped = "skipped (--no-real)"
    write_report(result)
    return result


def _real_runs(result: DemoResult, messages: int, say) -> None:
    from lab.report import plot_real
    from lab.run import RunOptions, measure_run, run

    for label, strategy, md, orders in REAL_RUNS:
        say(f"running the real engine through the KRX wire: {label} ({messages} MD messages)")
        name = label.replace(" + ", "-").replace(" ", "-").replace(",", "")
        pcap = os.path.join(result.out, f"run-{name}.pcapng")
        run_result = run(RunOptions(scenario="krx-2008", strategy=strategy, messages=messages,
                                    models=("imbalance-taker",), out=pcap, md=md, orders=orders))
        result.capture = run_result.capture["kind"]
        measured = measure_run(pcap, pcap.removesuffix(".pcapng") + ".tel")
        result.real[label] = measured.figures
        result.files[f"run-{label}"] = pcap
        _write_json(os.path.join(result.out, f"measure-{name}.json"), measured.figures)
    result.files["real"] = os.path.join(result.out, "real-decomposition.png")
    plot_real(result.real, result.files["real"])


def _write_json(path: str, document: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2)


def check_out(out: str) -> None:
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise LabError(f"--out {out}: no such directory {parent}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise LabError(f"--out {out}: exists and is not a folder")
