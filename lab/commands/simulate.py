"""`lab simulate SCENARIO`: where every bit is, and what each strategy buys."""
from __future__ import annotations

import json

from lab.errors import LabError
from lab.table import render
from simulator.scenario import load_scenario
from simulator.strategies import DESCRIPTIONS, Simulation, default_strategies, parse_strategy, simulate
from simulator.units import format_ps


def register(sub):
    p = sub.add_parser(
        "simulate", help="simulate one trigger through a scenario's network",
        description="Carry one market-data frame to the host and the resulting order to the arbiter, "
                    "for each speculative-send strategy. Times are relative to the MD frame's first "
                    "bit at the first point.",
        epilog="strategies: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
               + ". Combine a send side with early-read: tcp-prefix+early-read.")
    p.add_argument("scenario", help="a built-in name (see `lab scenarios`) or a TOML file")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help="repeatable; default: every strategy the scenario supports")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="write a space-time diagram")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.plot and not args.plot.lower().endswith(".png"):
        raise LabError(f"--plot {args.plot}: the diagram is written as PNG; name the file *.png")
    scenario = load_scenario(args.scenario)
    names = args.strategy or default_strategies(scenario)
    for name in names:
        parse_strategy(name)
    sim = simulate(scenario, names)
    if args.plot:
        from lab.spacetime import plot_simulation
        plot_simulation(sim, args.plot, names or None)
    if args.json:
        print(json.dumps(to_json(sim), indent=2))
    else:
        print(to_text(sim))
        if args.plot:
            print(f"\nspace-time diagram: {args.plot}")
    return 0


def to_json(sim: Simulation) -> dict:
    def frame(f):
        return {"label": f.label, "l3_bytes": f.l3_bytes,
                "points": [{"name": p.name, "first_bit_ps": p.first_bit_ps, "last_bit_ps": p.last_bit_ps}
                           for p in f.points]}

    flows = {name: frame(frames[0]) for name, frames in sim.flows.items()}
    return {
        "scenario": sim.scenario.name,
        "description": sim.scenario.description,
        "t_md_ps": sim.t_md_ps,
        "notes": sim.scenario.notes,
        "flows": flows,
        "strategies": {
            name: {
                "implied_tick_to_trade_ps": r.implied_tick_to_trade_ps,
                "arbiter_arrival_ps": r.arbiter_arrival_ps,
                "baseline_arrival_ps": r.baseline_arrival_ps,
                "tick_to_trade_ps": r.tick_to_trade_ps,
                "decision_ps": r.decision_ps,
                "decomposition": r.decomposition,
                "frames": [frame(f) for f in r.frames],
            }
            for name, r in sim.strategies.items()
        },
    }


def to_text(sim: Simulation) -> str:
    s = sim.scenario
    out = [f"{s.name}: {s.description.split('. ')[0].rstrip('.')}."]
    md = sim.flows["md"][0]
    out.append(f"t_MD = {format_ps(sim.t_md_ps)} (first bit of the MD frame at {md.points[-1].name}); "
               f"times from its first bit at {md.points[0].name}")
    out += [f"note: {n}" for n in s.notes]
    for name, frames in sim.flows.items():
        f = frames[0]
        out.append(f"\n{name} frame ({f.label}, {f.l3_bytes} B IP datagram)")
        out.append(render(["point", "first bit", "last bit", "first bit - t_MD"],
                          [[p.name, format_ps(p.first_bit_ps), format_ps(p.last_bit_ps),
                            format_ps(p.first_bit_ps - sim.t_md_ps)] for p in f.points]))
    if not sim.strategies:
        return "\n".join(out)
    rows = []
    for name, r in sim.strategies.items():
        rows.append([name, format_ps(r.implied_tick_to_trade_ps), format_ps(r.tick_to_trade_ps),
                     format_ps(r.arbiter_arrival_ps), format_ps(r.baseline_arrival_ps),
                     format_ps(r.wait_for_frame_ps), format_ps(r.processing_ps), format_ps(r.host_tx_ps),
                     format_ps(sum(r.savings_ps.values()))])
    out.append("\nimplied tick-to-trade = wait for frame + processing + host tx - savings "
               "(arbiter arrival - baseline arrival)")
    out.append(render(["strategy", "implied", "tap t2t", "arbiter", "baseline", "wait", "processing",
                       "host tx", "savings"], rows))
    for name, r in sim.strategies.items():
        if name == "none":
            continue
        hops = ", ".join(f"{hop} {format_ps(v)}" for hop, v in r.savings_ps.items())
        costs = r.costs
        cost_text = f"{costs['extra_header_bytes']} B extra headers, {costs['extra_wire_bytes_first_hop']} B extra on the first hop"
        if costs["killed_frame_wire_ps"]:
            cost_text += f", {format_ps(costs['killed_frame_wire_ps'])} of wire per killed frame"
        out.append(f"{name}: savings per hop: {hops}; costs: {cost_text}")
    return "\n".join(out)
