"""`lab compare`: every speculative-send strategy side by side, over many triggers, and what each costs."""
from __future__ import annotations

import argparse
import json

from lab.arguments import bounded, comma_list, positive_int
from lab.compare import CompareOptions, compare, plot
from lab.errors import LabError

_rate = bounded(float, 1e-3, 1e9, "a number of messages per second")


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < share <= 1:                      # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 and <= 1")
    return share


def register(sub):
    p = sub.add_parser(
        "compare", help="compare speculative-send strategies over many triggers, with costs and sweeps",
        description="Simulate N market-data messages (seeded Poisson arrivals) and the orders a share of them "
                    "trigger, for every strategy through the same order path (FIFO), and report each "
                    "strategy's implied tick-to-trade distribution and costs; then sweep line rate, prefix "
                    "size, early-read offset and hop count. --real adds real-engine runs (lab run).")
    p.add_argument("--scenario", required=True, help="built-in scenario name or TOML file")
    p.add_argument("--strategies", type=comma_list(what="strategy names"), metavar="A,B",
                   help="comma-separated (default: every strategy the scenario supports); none is always added")
    p.add_argument("--messages", type=positive_int, default=1000, metavar="N", help="MD messages (default 1000)")
    p.add_argument("--trade-share", type=_share, default=0.3, metavar="P",
                   help="share of MD messages that trigger an order (default 0.3)")
    p.add_argument("--rate", type=_rate, metavar="MSGS_PER_S",
                   help="MD messages per second leaving the exchange (default: 50%% of the MD path's capacity)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrivals and trade draws (default 1)")
    p.add_argument("--real", action="store_true",
                   help="add real-engine runs of none and tcp-prefix (lab run)")
    p.add_argument("--out", metavar="DIR", help="keep the real runs' files here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="write the CDFs and the sweeps as a PNG")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.plot and not args.plot.lower().endswith(".png"):
        raise LabError(f"--plot {args.plot}: the figure is written as PNG; name the file *.png")
    comparison = compare(CompareOptions(scenario=args.scenario, strategies=args.strategies, messages=args.messages,
                                        trade_share=args.trade_share, seed=args.seed, rate=args.rate,
                                        real=args.real, out=args.out))
    if args.plot:
        plot(comparison, args.plot)
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print(comparison.table())
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0
