"""Nearest-rank percentiles and the latency summary, in integer nanoseconds.

The p-th percentile of n sorted values is the value at rank ceil(p/100 * n)
(1-based), so it is always a value that was measured, and p100 is the max. The
rank is computed with integer arithmetic (p99.99 is 9999/10000), never with
floats. The mean is the exact integer sum over the count, rounded to the nearest
ns (a half rounds up). Shared by the analysis and the venue.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

# name in the JSON -> percentile as an exact fraction of 1
PERCENTILES = {
    "p50": Fraction(50, 100),
    "p90": Fraction(90, 100),
    "p99": Fraction(99, 100),
    "p99_9": Fraction(999, 1000),
    "p99_99": Fraction(9999, 10000),
}
SUMMARY_KEYS = ("count", "min", "mean", *PERCENTILES, "max")


def nearest_rank(sorted_values: np.ndarray, fraction: Fraction) -> int:
    """The value at rank ceil(fraction * n) of ascending values (n >= 1)."""
    n = sorted_values.size
    rank = -((-fraction.numerator * n) // fraction.denominator)      # ceil, exact
    return int(sorted_values[max(rank, 1) - 1])


def summarize(values_ns: np.ndarray) -> dict:
    """count, min, mean, p50, p90, p99, p99_9, p99_99, max (ints; None when there are no values)."""
    values = np.sort(np.asarray(values_ns, dtype=np.int64))
    n = values.size
    if n == 0:
        return {key: (0 if key == "count" else None) for key in SUMMARY_KEYS}
    total = sum(int(part) for part in np.add.reduceat(values, np.arange(0, n, 1 << 20)))  # exact
    summary = {"count": n, "min": int(values[0]), "mean": (2 * total + n) // (2 * n)}
    summary.update({key: nearest_rank(values, fraction) for key, fraction in PERCENTILES.items()})
    summary["max"] = int(values[-1])
    return summary
