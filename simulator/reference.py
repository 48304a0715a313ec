"""Scalar reference for Path.transit: one packet at a time, Python ints.

Written for clarity, to check the vectorised path bit for bit in tests and to
be the baseline of benchmarks/bench_simulator.py. Not used on any other path.
"""
from __future__ import annotations

from simulator.path import ABSENT, CUT_THROUGH, PASSIVE, Path
from simulator.units import bits_time_ps


def transit_scalar(path: Path, ready_ps, l3_bytes, enter=None, leave=None):
    """Returns (tx_start, service) as lists of per-hop lists, like Transit's arrays."""
    n, n_hops = len(ready_ps), len(path.hops)
    enter = [0] * n if enter is None else [int(e) for e in enter]
    leave = [n_hops - 1] * n if leave is None else [int(x) for x in leave]
    tx_start = [[ABSENT] * n for _ in range(n_hops)]
    service = [[0] * n for _ in range(n_hops)]
    for h, hop in enumerate(path.hops):
        queue = []
        for k in range(n):
            if not enter[k] <= h <= leave[k]:
                continue
            if enter[k] == h:
                eligible = int(ready_ps[k])
            else:
                prev = path.hops[h - 1]
                first_in = tx_start[h - 1][k] + prev.delay_ps
                last_in = first_in + service[h - 1][k]
                if hop.forward == PASSIVE:
                    eligible = first_in
                elif hop.forward == CUT_THROUGH:
                    eligible = min(first_in + hop.cut_through_ps, last_in) + hop.latency_ps
                else:
                    eligible = last_in + hop.latency_ps
            queue.append((eligible, k))
        queue.sort()  # FIFO by eligibility, ties in arrival (index) order
        free_at = None
        gap = bits_time_ps(hop.framing.gap * 8, hop.rate_bps)
        for eligible, k in queue:
            wire = bits_time_ps(hop.framing.wire_bytes(int(l3_bytes[k])) * 8, hop.rate_bps)
            start = eligible if free_at is None else max(eligible, free_at)
            tx_start[h][k], service[h][k] = start, wire
            free_at = start + wire + gap
    return tx_start, service
