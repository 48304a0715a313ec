"""`lab timekeeper --engine NAME`: live per-stage latency of a running engine.

It attaches to the engine's timing queue as an observer (the engine does not
notice) and shows, per publishing stage, percentiles of publish - origin: how
long after the market data entered the engine each stage had published.
"""
from __future__ import annotations

import json
import sys
import time
from collections import deque

import numpy as np

from engine.clock import calibrate
from engine.messages import ACTORS, KINDS, TIMING
from engine.queues import Consumer, Queue, QueueError
from lab.errors import LabError
from lab.table import render

STAGE_NAMES = {kind: name for name, kind in KINDS.items()}
PUBLISHER_NAMES = {actor: name for name, actor in ACTORS.items()}
PERCENTILES = (50, 90, 99, 99.9)


def key(p) -> str:
    """50 -> 'p50_ns', 99.9 -> 'p99_9_ns'."""
    return f"p{str(p).replace('.', '_')}_ns"


def register(sub):
    p = sub.add_parser("timekeeper", help="live per-stage latency of a running engine",
                       description="Attach to a running engine's timing queue by name and show per-stage "
                                   "percentiles of (publish - origin) in microseconds.")
    p.add_argument("--engine", required=True, metavar="NAME", help="the engine's name ([engine] name)")
    p.add_argument("--window", type=int, default=100_000, help="samples per stage kept (default 100000)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--from-start", action="store_true",
                   help="also count what is still in the ring from before attaching")
    p.add_argument("--json", action="store_true", help="collect for --duration, then print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.window <= 0 or args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        raise LabError("--window, --interval and --duration must be positive")
    if args.json and args.duration is None:
        raise LabError("--json needs --duration (it prints once, at the end)")
    try:
        queue = Queue.attach(f"{args.engine}.timing", TIMING.dtype)
    except QueueError as exc:
        raise LabError(f"cannot attach to engine {args.engine!r}: {exc}") from None
    try:
        keeper = Timekeeper(queue, args.window, args.from_start)
        if args.json:
            keeper.collect_for(args.duration)
            print(json.dumps(keeper.report(), indent=2))
        else:
            keeper.live(args.interval, args.duration)
    finally:
        queue.close()
    return 0


class Timekeeper:
    def __init__(self, queue: Queue, window: int, from_start: bool = False):
        start = max(0, queue.head() - queue.capacity + 1) if from_start else queue.head()
        self.consumer = Consumer(queue, start)
        self.calibration = calibrate(duration_s=0.05, samples=100)
        self.samples: dict[tuple[int, int], deque] = {}
        self.window = window
        self.seen = 0

    def drain(self) -> int:
        got = 0
        while (raw := self.consumer.poll_bytes()) is not None:
            record = np.frombuffer(raw, dtype=TIMING.dtype)[0]
            key = (int(record["publisher"]), int(record["kind"]))
            delta = int(record["publish_tsc"]) - int(record["origin_tsc"])
            self.samples.setdefault(key, deque(maxlen=self.window)).append(delta)
            got += 1
        self.seen += got
        return got

    def collect_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.drain():
                time.sleep(0.0005)

    def report(self) -> dict:
        hz = self.calibration.frequency_hz
        stages = {}
        for (publisher, kind), deltas in sorted(self.samples.items()):
            ns = np.array(deltas, dtype=np.int64) * 10**9 // hz
            name = f"{PUBLISHER_NAMES.get(publisher, publisher)}:{STAGE_NAMES.get(kind, kind)}"
            stages[name] = {"count": int(len(ns)), "min_ns": int(ns.min()), "max_ns": int(ns.max()),
                            **{key(p): int(np.percentile(ns, p)) for p in PERCENTILES}}
        return {"messages": self.seen, "missed": self.consumer.missed, "stages": stages}

    def table(self) -> str:
        report = self.report()
        rows = [[name, s["count"]] + [f"{s[key(p)] / 1000:.2f}" for p in PERCENTILES]
                for name, s in report["stages"].items()]
        head = f"timing messages: {report['messages']}  missed (sped past): {report['missed']}"
        return head + "\n" + render(["stage (publish - origin)", "count"] + [f"p{p} us" for p in PERCENTILES], rows)

    def live(self, interval: float, duration: float | None) -> None:
        from rich.live import Live
        from rich.text import Text
        end = None if duration is None else time.monotonic() + duration
        with Live(Text("waiting for timing messages..."), refresh_per_second=4, transient=False,
                  console=None) as live:
            next_draw = time.monotonic()
            while end is None or time.monotonic() < end:
                if not self.drain():
                    time.sleep(0.0005)
                if time.monotonic() >= next_draw:
                    live.update(Text(self.table()))
                    next_draw += interval
        if not sys.stdout.isatty():
            print(self.table())
