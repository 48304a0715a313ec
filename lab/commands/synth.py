"""`lab synth`: write a synthetic capture of one trading host, with its latencies known."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from engine.protocol.registry import DEFAULT_MD, DEFAULT_ORDERS, md_protocol_names, order_protocol_names
from lab.arguments import positive_int
from lab.errors import LabError
from lab.synth import CONVENTIONS, TRUTH_COLUMNS, SynthConfig, synthesize, write_capture, write_links, write_truth
from lab.table import render
from simulator.units import UnitError, format_rate, parse_rate

FORMATS = ("pcap", "pcapng")
PROGRESS_MIN_FRAMES = 1 << 20


def register(sub):
    p = sub.add_parser(
        "synth", help="write a synthetic capture with known tick-to-trade",
        description="Write a pcap/pcapng of one trading host at its tap: UDP market data in (the lab's WM, or "
                    "ITCH 5.0 in MoldUDP64), orders out over TCP to a venue gateway (binary, FIX or OUCH 4.2), "
                    "acks and fills back, with split orders (prefix + rest), a few retransmissions and "
                    "out-of-order segments. Every latency is known to the nanosecond; --truth writes it per "
                    "trigger.")
    p.add_argument("--out", required=True, metavar="FILE", help="capture to write (mode 0600)")
    p.add_argument("--triggers", required=True, type=positive_int, metavar="N",
                   help="market-data datagrams that trigger an order")
    p.add_argument("--format", choices=FORMATS,
                   help="file format (default: pcapng if FILE ends in .pcapng, else pcap)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--convention", choices=CONVENTIONS, default="hardware",
                   help="timestamps: hardware = every frame's first bit at the tap (default); software = "
                        "inbound at the last bit, outbound at the first bit")
    p.add_argument("--line-rate", type=_rate, default=10**10, metavar="RATE",
                   help="the tap's link rate, e.g. 10Gbps (default), 1Gbps, 100Mbps")
    p.add_argument("--orders", choices=order_protocol_names(), default=DEFAULT_ORDERS,
                   help="order entry protocol on the TCP connection (default binary)")
    p.add_argument("--md", choices=md_protocol_names(), default=DEFAULT_MD,
                   help="market-data protocol of the UDP feed (default wm)")
    p.add_argument("--truth", metavar="FILE.csv",
                   help=f"write the known latencies per trigger: {', '.join(TRUTH_COLUMNS)}")
    p.add_argument("--telemetry", metavar="FILE.tel",
                   help="write each order's link to its trigger as the engine's telemetry does, for "
                        "`lab measure --telemetry` (orders that carry no trigger: OUCH)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    file_format = args.format or ("pcapng" if args.out.lower().endswith(".pcapng") else "pcap")
    named = [path for path in (args.out, args.truth, args.telemetry) if path]
    if len(set(named)) != len(named):
        raise LabError("--out, --truth and --telemetry must name different files")
    synthesis = synthesize(SynthConfig(triggers=args.triggers, seed=args.seed, line_rate_bps=args.line_rate,
                                       order_format=args.orders, md_format=args.md))
    frames = synthesis.frames.first_ns.size
    progress = None
    if sys.stderr.isatty() and frames >= PROGRESS_MIN_FRAMES:
        from tqdm import tqdm
        bar = tqdm(total=frames, unit="frame", unit_scale=True, file=sys.stderr, desc="lab synth")
        progress = bar.update
    try:
        written = write_capture(synthesis, args.out, file_format, args.convention, progress)
    finally:
        if progress:
            bar.close()
    if args.truth:
        write_truth(synthesis, args.truth)
    if args.telemetry:
        write_links(synthesis, args.telemetry)
    report = summary(synthesis, written, args, file_format)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        rows = [[key, value] for key, value in report.items() if not isinstance(value, dict)]
        rows += [[f"tick_to_trade_ns {stat}", value] for stat, value in report["tick_to_trade_ns"].items()]
        print(render(["synth", ""], rows, "lr"))
    return 0


def summary(synthesis, written: dict, args, file_format: str) -> dict:
    ttt = synthesis.truth["tick_to_trade_ns"]
    return {
        "out": args.out, "format": file_format, "convention": args.convention,
        "line_rate": format_rate(args.line_rate), "orders": args.orders, "seed": args.seed,
        "truth": args.truth, "packets": written["frames"], "bytes": written["file_bytes"],
        "first_ts_ns": written["first_ts_ns"], "last_ts_ns": written["last_ts_ns"],
        "duration_ns": written["last_ts_ns"] - written["first_ts_ns"],
        **synthesis.counts,
        "tick_to_trade_ns": {"min": int(ttt.min()), "p50": int(np.percentile(ttt, 50, method="lower")),
                             "p99": int(np.percentile(ttt, 99, method="lower")), "max": int(ttt.max())},
    }
