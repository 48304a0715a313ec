"""Packet-hops per second of Path.transit (numpy) against the scalar reference, in one run.

    python benchmarks/bench_simulator.py --json [--packets N] [--repeat R]

Absolute times on a shared 2-core machine are noisy: the medians and the ratio
are what to read. Memory is tracemalloc's peak during one transit, per packet-hop.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc

import numpy as np

from simulator.framing import FRAMINGS
from simulator.path import CUT_THROUGH, Host, Link, Switch, compile_path
from simulator.reference import transit_scalar

ETH = FRAMINGS["ethernet"]


def bench_path():
    """Eight hops: 10G and 1G, cut-through and store-and-forward, as a colo path might be."""
    g10, g1 = 10 * 10**9, 10**9
    return compile_path("bench", [
        Host("src"), Link("a", g10, 1_000, ETH), Switch("s1", CUT_THROUGH, 300_000, 64),
        Link("b", g10, 5_000, ETH), Switch("s2", "store-and-forward", 900_000),
        Link("c", g1, 50_000, ETH), Switch("s3", "store-and-forward", 1_000_000),
        Link("d", g10, 2_000, ETH), Switch("s4", CUT_THROUGH, 250_000, 64),
        Link("e", g10, 2_000, ETH), Switch("s5", CUT_THROUGH, 250_000, 64),
        Link("f", g10, 2_000, ETH), Switch("s6", "store-and-forward", 500_000),
        Link("g", g1, 2_000, ETH), Switch("s7", CUT_THROUGH, 250_000, 64),
        Link("h", g1, 2_000, ETH), Host("dst"),
    ])


def workload(n: int, hops: int, cross: bool, seed: int = 1):
    rng = np.random.default_rng(seed)
    ready = np.sort(rng.integers(0, n * 2_000_000, n))     # ~0.5 Mpps offered: queues on the 1G hops
    size = rng.integers(46, 1500, n)
    if not cross:
        return ready, size, None, None
    enter = np.where(rng.random(n) < 0.7, 0, rng.integers(0, hops, n))
    leave = np.maximum(enter, np.where(rng.random(n) < 0.7, hops - 1, rng.integers(0, hops, n)))
    return ready, size, enter, leave


def timed(fn, repeat):
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--scalar-packets", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = bench_path()
    hops = len(path.hops)
    results = {"hops": hops, "packets": args.packets, "scalar_packets": args.scalar_packets}
    for case, cross in (("whole_path", False), ("cross_traffic", True)):
        ready, size, enter, leave = workload(args.packets, hops, cross)
        vec = timed(lambda: path.transit(ready, size, enter, leave), args.repeat)
        t = path.transit(ready, size, enter, leave)
        packet_hops = int((t.tx_start != np.iinfo(np.int64).min).sum())
        tracemalloc.start()
        path.transit(ready, size, enter, leave)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        m = args.scalar_packets
        sub = (ready[:m].tolist(), size[:m].tolist(),
               None if enter is None else enter[:m].tolist(), None if leave is None else leave[:m].tolist())
        scalar = timed(lambda: transit_scalar(path, *sub), max(1, args.repeat // 2))
        scalar_hops = packet_hops * m / args.packets
        vec_rate, scalar_rate = packet_hops / vec, scalar_hops / scalar
        results[case] = {
            "packet_hops": packet_hops,
            "vectorised_s_median": round(vec, 4),
            "packet_hops_per_s": round(vec_rate),
            "scalar_packet_hops_per_s": round(scalar_rate),
            "speedup_vs_scalar": round(vec_rate / scalar_rate, 1),
            "peak_bytes_per_packet_hop": round(peak / packet_hops, 1),
        }
    results["packet_hops_per_s"] = results["whole_path"]["packet_hops_per_s"]
    results["speedup_vs_scalar"] = results["whole_path"]["speedup_vs_scalar"]
    results["targets"] = {"packet_hops_per_s": 10_000_000, "speedup_vs_scalar": 20,
                          "peak_bytes_per_packet_hop": 100}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for case in ("whole_path", "cross_traffic"):
            r = results[case]
            print(f"{case:14s} {r['packet_hops_per_s'] / 1e6:7.1f} M packet-hops/s  "
                  f"scalar {r['scalar_packet_hops_per_s'] / 1e6:5.2f} M/s  x{r['speedup_vs_scalar']}  "
                  f"{r['peak_bytes_per_packet_hop']} B/packet-hop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
