"""`lab run`: the real engine over loopback through a simulated network -> a hardware-style pcapng."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from engine.protocol.registry import DEFAULT_MD, DEFAULT_ORDERS, md_protocol_names, order_protocol_names
from lab.run import CAPTURES, MODELS, REAL_STRATEGIES, RunOptions, run as run_experiment
from lab.arguments import bounded, comma_list, positive_int
from lab.progress import ProgressBar
from lab.table import render


_port = bounded(int, 0, 65535, "a port number")
_rate = bounded(float, 1e-3, 1e9, "a number of messages per second")


def register(sub):
    p = sub.add_parser(
        "run", help="drive the real engine over loopback through a simulated network",
        description="Start the venue(s), the engine and a loopback capture; put each market-data datagram "
                    "on loopback when the scenario says its last bit reaches the host NIC; stop everything "
                    "and write a hardware-style pcapng (host-tap and exchange-tap), the engine's telemetry "
                    "and its persistence log. The capture is AF_PACKET on lo (CAP_NET_RAW), or without it the "
                    "sockets' own kernel stamps. "
                    "Then: lab measure --pcap OUT --telemetry TEL.")
    p.add_argument("--scenario", default="krx-2008", help="built-in scenario name or TOML file (default krx-2008)")
    p.add_argument("--strategy", required=True, choices=REAL_STRATEGIES, help="the engine's speculative-send strategy")
    p.add_argument("--messages", type=positive_int, default=200, metavar="N", help="MD datagrams (default 200)")
    p.add_argument("--rate", type=_rate, metavar="MSGS_PER_S",
                   help="MD datagrams per second leaving the exchange (default: 80%% of the MD path's capacity)")
    p.add_argument("--venues", type=positive_int, default=1, metavar="K", help="venues at once (default 1, at most 8)")
    p.add_argument("--out", required=True, metavar="RUN.pcapng", help="the hardware-style capture to write")
    p.add_argument("--telemetry", metavar="RUN.tel", help="the engine's telemetry file (default: OUT with .tel)")
    p.add_argument("--models", type=comma_list(tuple(MODELS), "trade models"), default=tuple(MODELS), metavar="A,B",
                   help=f"the engine's trade models on each venue (default {','.join(MODELS)}). join-the-touch "
                        "re-prices by cancel, then a new order once the cancel is confirmed: that order waits a "
                        "venue round trip")
    p.add_argument("--orders", choices=order_protocol_names(), default=DEFAULT_ORDERS, help="order entry protocol")
    p.add_argument("--md", choices=md_protocol_names(), default=DEFAULT_MD,
                   help="market-data protocol the venue publishes (itch50: its book as ITCH 5.0 order events)")
    p.add_argument("--queue-model", choices=("risk-averse", "power-law"), default="risk-averse",
                   help="the venues' queue-position model for resting orders")
    p.add_argument("--feed", default="synthetic", metavar="synthetic|log:PATH|pcap:PATH",
                   help="where the market data comes from (default: a synthetic L2 market)")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic market (default 1)")
    p.add_argument("--port", type=_port, default=0,
                   help="first loopback port to use: feeds, then gateways (default: any free ports)")
    p.add_argument("--capture", choices=CAPTURES, default="auto",
                   help="packet: AF_PACKET on lo (needs CAP_NET_RAW); sockets: rebuilt from the sockets' own kernel "
                        "stamps (no engine ACKs, no venue replies); auto (default): packet if allowed, else sockets")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    options = RunOptions(scenario=args.scenario, strategy=args.strategy, messages=args.messages, rate=args.rate,
                         venues=args.venues, out=args.out, telemetry=args.telemetry, seed=args.seed,
                         orders=args.orders, md=args.md, queue_model=args.queue_model, models=args.models, feed=args.feed, port=args.port, capture=args.capture)
    with ProgressBar(args.messages, "msg", "lab run") as update:
        options.progress = (lambda done, _total: update(done)) if update else None
        result = run_experiment(options)
    for warning in result.warnings:
        print(f"lab run: WARNING: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(asdict(result), indent=2, default=int))
        return 0
    engine = result.engine
    rows = [
        ["scenario / strategy", f"{result.scenario} / {result.strategy}"],
        ["MD datagrams sent", f"{result.messages} at {result.rate:.1f}/s"],
        ["delivery late p50 / p99 (ns)", f"{result.delivery.get('late_ns', {}).get('p50')} / "
                                         f"{result.delivery.get('late_ns', {}).get('p99')}"],
        ["engine: MD handled / orders", f"{engine.get('md_handled')} / {engine.get('orders')}"],
        ["venue messages (voids among them)", ", ".join(f"{v['messages']} ({v['voids']})" for v in result.venues)],
        ["engine positions (venue: instrument: qty)", json.dumps(engine.get("positions"))],
        ["capture packets / drops", f"{result.capture.get('packets')} / {result.capture.get('drops')}"],
        ["seconds", f"{result.seconds:.1f}"],
    ]
    print(render(["", ""], rows, align="ll"))
    print(f"\nwrote {result.out} (host-tap, exchange-tap), {result.telemetry}, {result.log}")
    print(f"next: lab measure --pcap {result.out} --telemetry {result.telemetry}")
    return 0
