"""ITCH messages per second into the L3 book in C (decode_itch) against the plain-Python reference
L3 book, on the same generated day, in one run.

    python benchmarks/bench_l3book.py --json [--messages N] [--max-per-packet K] [--rounds R]

The day (tests/engine/itch_day.py, seeded): adds, executions, cancels, deletes, replaces and trades
over four stock locates, packed 1 to K messages to a MoldUDP64 packet (uniformly). Generating and
encoding it is not timed.

- c: one decode_itch call per packet with a fresh book and order map each round, the Python loop
  over the packets included, as the engine's MD handler pays it; the median of R rounds.
- c_one_per_packet: the same day one message a packet, the per-call cost at its worst.
- baseline: ReferenceL3Book.packet (struct unpacking, dicts of orders and levels, max/min for the
  top) over the same packets, once.

Both books must end with the same top of book for every instrument ("tops_equal"). This VM is
shared and has 2 vCPUs: trust the medians and the ratio, not one round's time.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from engine.book import Books, ItchOrders, decode_itch
from lab.cli import OneLineParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
from itch_day import LOCATES, TICK, VENUE, ReferenceL3Book, encode_packets, generate_day  # noqa: E402

TARGET_MSGS_PER_S = 1_000_000


def packet_counts(n_messages: int, most: int, seed: int) -> np.ndarray:
    """Messages per packet, 1 to `most` each, summing to n_messages."""
    counts = np.random.default_rng(seed).integers(1, most + 1, n_messages)
    counts = counts[:np.searchsorted(np.cumsum(counts), n_messages)]        # their sum is below n_messages
    return np.append(counts, n_messages - counts.sum())


def run_c(data: np.ndarray, bounds: np.ndarray) -> tuple[float, Books, int]:
    """Seconds for every packet through decode_itch, the books after it, and the updates made."""
    books = Books({(VENUE, locate) for locate in LOCATES}, lambda venue, instrument: TICK)
    orders, view, updates = ItchOrders(1 << 20), memoryview(data), 0
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    start = time.perf_counter()
    for first, end in spans:
        updates += len(decode_itch(view[first:end], books, orders, VENUE, 0, 0))
    return time.perf_counter() - start, books, updates


def run_reference(data: np.ndarray, bounds: np.ndarray) -> tuple[float, ReferenceL3Book]:
    book, view = ReferenceL3Book(dict.fromkeys(LOCATES, TICK)), memoryview(data)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    start = time.perf_counter()
    for first, end in spans:
        book.packet(view[first:end])
    return time.perf_counter() - start, book


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000, help="ITCH messages in the day")
    ap.add_argument("--max-per-packet", type=int, default=16, help="messages per MoldUDP64 packet: 1 to this")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the C book (the median is reported)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    for flag in ("messages", "max_per_packet", "rounds"):
        if getattr(args, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be a whole number > 0")
    day = generate_day(args.messages, args.seed)
    counts = packet_counts(args.messages, args.max_per_packet, args.seed)
    data, bounds = encode_packets(day, counts)
    rounds = [run_c(data, bounds) for _ in range(args.rounds)]
    c_s = statistics.median(seconds for seconds, _books, _updates in rounds)
    _seconds, books, updates = rounds[-1]
    one_data, one_bounds = encode_packets(day, np.ones(args.messages, np.int64))
    one_s = statistics.median(run_c(one_data, one_bounds)[0] for _ in range(args.rounds))
    reference_s, reference = run_reference(data, bounds)
    c_rate, reference_rate = args.messages / c_s, args.messages / reference_s
    results = {
        "messages": args.messages, "packets": int(counts.size),
        "messages_per_packet": round(args.messages / counts.size, 2), "updates": updates, "rounds": args.rounds,
        "c_s_median": round(c_s, 4), "c_msgs_per_s": round(c_rate),
        "c_msgs_per_s_one_per_packet": round(args.messages / one_s),
        "baseline_s": round(reference_s, 3), "baseline_msgs_per_s": round(reference_rate),
        "speedup_vs_baseline": round(c_rate / reference_rate, 1),
        "tops_equal": all(books[VENUE, locate].top() == reference.top(locate) for locate in LOCATES),
        "target_msgs_per_s": TARGET_MSGS_PER_S, "target_met": c_rate >= TARGET_MSGS_PER_S,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"C L3 book  {c_rate / 1e6:6.2f} M msgs/s ({results['messages_per_packet']} a packet), "
              f"{results['c_msgs_per_s_one_per_packet'] / 1e6:.2f} M/s one a packet")
        print(f"reference  {reference_rate / 1e6:6.2f} M msgs/s   x{results['speedup_vs_baseline']}   "
              f"tops equal: {results['tops_equal']}")
    return 0 if results["tops_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
