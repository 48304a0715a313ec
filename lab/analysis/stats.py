"""Latency statistics in integer nanoseconds, and their exports.

Percentiles use the nearest-rank method: the p-th percentile of n sorted
values is the value at rank ceil(p/100 * n) (1-based), so it is always a value
that was measured, and p100 is the max. The rank is computed with integer
arithmetic (p99.99 is 9999/10000), never with floats. The mean is the exact
integer sum over the count, rounded to the nearest ns (a half rounds up).

Exports: an HdrHistogram percentile distribution (.hgrm), a per-trigger CSV or
Parquet table, and a PNG with a histogram and a CDF.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from lab.errors import LabError

# name in the JSON -> percentile as an exact fraction of 1
PERCENTILES = {
    "p50": Fraction(50, 100),
    "p90": Fraction(90, 100),
    "p99": Fraction(99, 100),
    "p99_9": Fraction(999, 1000),
    "p99_99": Fraction(9999, 10000),
}
SUMMARY_KEYS = ("count", "min", "mean", *PERCENTILES, "max")


class ExportError(LabError):
    """An export that cannot be written as asked."""


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


def open_private(path, binary: bool = False):
    """Open an output file for writing, created (or truncated) owner-only (0o600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)   # an existing file keeps its mode under O_CREAT
    return os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""}))


# --- HdrHistogram ------------------------------------------------------------
class HdrLayout:
    """The bucket layout of an HdrHistogram (lowest 1, given highest and significant figures).

    Integer value -> counts index and index -> value range, as the HdrHistogram
    libraries define them, vectorised.
    """

    def __init__(self, highest: int, significant_figures: int = 3, lowest: int = 1):
        self.significant_figures = significant_figures
        self.unit_magnitude = int(math.floor(math.log(lowest) / math.log(2)))
        largest_single_unit = 2 * math.pow(10, significant_figures)
        sub_bucket_count_magnitude = int(math.ceil(math.log(largest_single_unit) / math.log(2)))
        self.sub_bucket_half_count_magnitude = max(sub_bucket_count_magnitude - 1, 0)
        self.sub_bucket_count = 1 << (self.sub_bucket_half_count_magnitude + 1)
        self.sub_bucket_half_count = self.sub_bucket_count // 2
        self.sub_bucket_mask = (self.sub_bucket_count - 1) << self.unit_magnitude
        smallest_untrackable = self.sub_bucket_count << self.unit_magnitude
        self.bucket_count = 1
        while smallest_untrackable <= highest:
            smallest_untrackable <<= 1
            self.bucket_count += 1
        self.counts_len = (self.bucket_count + 1) * self.sub_bucket_half_count

    def _bucket(self, values: np.ndarray) -> np.ndarray:
        bit_length = np.frexp((values | self.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
        return bit_length - self.unit_magnitude - (self.sub_bucket_half_count_magnitude + 1)

    def counts_index(self, values: np.ndarray) -> np.ndarray:
        bucket = self._bucket(values)
        sub_bucket = values >> (bucket + self.unit_magnitude)
        return ((bucket + 1) << self.sub_bucket_half_count_magnitude) + sub_bucket - self.sub_bucket_half_count

    def lowest_equivalent(self, index: np.ndarray) -> np.ndarray:
        bucket = (index >> self.sub_bucket_half_count_magnitude) - 1
        sub_bucket = (index & (self.sub_bucket_half_count - 1)) + self.sub_bucket_half_count
        low = bucket < 0
        sub_bucket = np.where(low, sub_bucket - self.sub_bucket_half_count, sub_bucket)
        bucket = np.maximum(bucket, 0)
        return sub_bucket << (bucket + self.unit_magnitude)

    def range_size(self, index: np.ndarray) -> np.ndarray:
        """Width of the value range an index stands for."""
        value = self.lowest_equivalent(index)
        bucket = self._bucket(value)
        sub_bucket = value >> (bucket + self.unit_magnitude)
        bucket = bucket + (sub_bucket >= self.sub_bucket_count)
        return np.left_shift(1, bucket + self.unit_magnitude)


HOUR_NS = 3600 * 10**9


def write_hgrm(path, values_ns: np.ndarray, ticks_per_half_distance: int = 5,
               significant_figures: int = 3) -> None:
    """Write the percentile distribution of `values_ns` in HdrHistogram's .hgrm text format.

    Values are recorded in ns (unit ratio 1) into a histogram with lowest 1,
    highest max(1 hour, max value) and 3 significant figures; the text is what
    HdrHistogram's outputPercentileDistribution writes (the hdrhistogram
    package's output, line for line), which hdrhistogram.com's plotter reads.
    """
    values = np.asarray(values_ns, dtype=np.int64)
    if values.size and int(values.min()) < 0:
        raise ExportError(f"--hgrm {path}: HdrHistogram cannot hold negative latencies "
                          f"(min {int(values.min())} ns); check --convention and --line-rate")
    if values.size and int(values.max()) >= 1 << 53:
        raise ExportError(f"--hgrm {path}: a latency of {int(values.max())} ns is too large to record")
    highest = max(HOUR_NS, int(values.max()) if values.size else 0)
    layout = HdrLayout(highest, significant_figures)
    with open_private(path) as out:
        out.write(hgrm_text(layout, values, ticks_per_half_distance))


def hgrm_text(layout: HdrLayout, values: np.ndarray, ticks_per_half_distance: int = 5) -> str:
    """The .hgrm text for `values` (non-negative int64 ns) in `layout`."""
    figures = layout.significant_figures
    lines = ["%12s %14s %10s %14s\n\n" % ("Value", "Percentile", "TotalCount", "1/(1-Percentile)")]
    index, counts = np.unique(layout.counts_index(values), return_counts=True)
    total = int(values.size)
    if total:
        highest_in_range = layout.lowest_equivalent(index) + layout.range_size(index) - 1
        lines += _percentile_lines(highest_in_range, np.cumsum(counts), total, ticks_per_half_distance,
                                   figures)
    mean, stddev = _hdr_mean_stddev(layout, index, counts, total)
    max_value = float(int(highest_in_range[-1])) if total else 0.0
    lines.append(f"#[Mean    = %12.{figures}f, StdDeviation   = %12.{figures}f]\n" % (mean, stddev))
    lines.append(f"#[Max     = %12.{figures}f, TotalCount     = %12.{figures}f]\n" % (max_value, total))
    lines.append("#[Buckets = %12d, SubBuckets     = %12d]\n" % (layout.bucket_count, layout.sub_bucket_count))
    return "".join(lines)


def _percentile_lines(value: np.ndarray, cumulative: np.ndarray, total: int, ticks_per_half_distance: int,
                      figures: int) -> list[str]:
    """HdrHistogram's percentile iteration over the non-empty buckets.

    The target percentile starts at 0 and steps closer to 100 by
    ticks_per_half_distance ticks per halving of the distance; a line is written
    at the first bucket whose cumulative count reaches the target. Once every
    count has been reached, the next line is the one at 100%. Float arithmetic
    follows the reference iterator step for step so the text is identical.
    """
    line = f"%12.{figures}f %2.12f %10d %14.2f\n"
    last_line = f"%12.{figures}f %2.12f %10d\n"
    lines = []
    target = 0.0
    row, added, reached_end = 0, False, False
    while True:
        so_far = int(cumulative[row]) if added else (int(cumulative[row - 1]) if row else 0)
        if so_far >= total:
            if reached_end:
                return lines
            target, reached_end = 100.0, True
        if not added:
            added, so_far = True, int(cumulative[row])
        if (100.0 * so_far) / total >= target:
            if target != 100:
                lines.append(line % (float(int(value[row])), target / 100, so_far, 1 / (1 - target / 100)))
            else:
                lines.append(last_line % (float(int(value[row])), target / 100, so_far))
            gap = 100.0 - target
            if gap:
                half_distance = math.pow(2, (math.log(100 / gap) / math.log(2)) + 1)
                target += 100.0 / (ticks_per_half_distance * half_distance)
            continue
        row, added = row + 1, False


def _hdr_mean_stddev(layout: HdrLayout, index: np.ndarray, counts: np.ndarray, total: int) -> tuple[float, float]:
    """Mean and standard deviation over bucket midpoints, summed in bucket order as HdrHistogram does."""
    if total == 0:
        return 0.0, 0.0
    median = layout.lowest_equivalent(index) + (layout.range_size(index) >> 1)
    mean = float(sum(int(c) * int(m) for c, m in zip(counts, median))) / total
    deviation = 0.0
    for c, m in zip(counts, median):
        dev = float(int(m)) - mean
        deviation += (dev * dev) * int(c)
    return mean, math.sqrt(deviation / total)


# --- per-trigger table and plot ------------------------------------------------
def require_pyarrow(path) -> None:
    """Parquet is written with pyarrow, an optional dependency: say so clearly when it is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportError(f"--parquet {path}: writing Parquet needs pyarrow (pip install pyarrow), "
                          f"or use --csv") from None


class TableWriter:
    """Per-trigger rows written as they come, part by part: CSV, or Parquet (needs pyarrow).
    The file is created owner-only when the writer is made; close() finishes it."""

    def __init__(self, path, columns: tuple[str, ...], parquet: bool = False):
        self.path, self.columns, self.parquet = path, columns, parquet
        if parquet:
            require_pyarrow(path)
        self._out = open_private(path, binary=parquet)
        self._parquet_writer = None

    def write(self, columns: dict[str, np.ndarray]) -> None:
        import pandas as pd
        frame = pd.DataFrame({name: columns[name] for name in self.columns})
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet_writer is None:
                self._parquet_writer = pq.ParquetWriter(self._out, table.schema)
            self._parquet_writer.write_table(table)
        else:
            frame.to_csv(self._out, index=False, header=self._out.tell() == 0)

    def close(self) -> None:
        if self._parquet_writer is None and self._out.tell() == 0:     # no part came: an empty table
            self.write({name: np.zeros(0, np.int64) for name in self.columns})
        if self._parquet_writer is not None:
            self._parquet_writer.close()
        self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_table(path, columns: dict[str, np.ndarray], parquet: bool = False) -> None:
    """Per-trigger rows as CSV, or as Parquet (needs pyarrow), in one go."""
    with TableWriter(path, tuple(columns), parquet) as writer:
        writer.write(columns)


def write_plot(path, values_ns: np.ndarray, title: str) -> None:
    """A PNG: the latency histogram up to p99.9 (left) and the whole CDF on a log axis (right), in us."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.sort(np.asarray(values_ns, dtype=np.int64))
    us = values / 1000.0
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    if values.size:
        edge = nearest_rank(values, PERCENTILES["p99_9"]) / 1000.0
        shown = us[us <= edge]
        hist.hist(shown, bins=min(200, max(10, int(np.sqrt(shown.size)))), color="tab:blue")
        for key in ("p50", "p99"):
            mark = nearest_rank(values, PERCENTILES[key]) / 1000.0
            hist.axvline(mark, color="k", ls="--", lw=0.8)
            hist.annotate(key, (mark, 0.95), xycoords=("data", "axes fraction"), fontsize=8)
        hist.set_title(f"histogram up to p99.9 ({values.size - shown.size} above not shown)", fontsize=10,
                       loc="left")
        cdf.plot(us, np.arange(1, values.size + 1) / values.size, color="tab:blue", lw=1.2)
        if us[0] > 0:
            cdf.set_xscale("log")
    else:
        for ax in (hist, cdf):
            ax.text(0.5, 0.5, "no matched triggers", ha="center", transform=ax.transAxes)
    hist.set_xlabel("tick-to-trade (us)")
    hist.set_ylabel("triggers")
    cdf.set_xlabel("tick-to-trade (us)")
    cdf.set_ylabel("fraction of triggers <= x")
    cdf.set_ylim(0, 1.0)
    cdf.set_title("CDF", fontsize=10, loc="left")
    for ax in (hist, cdf):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with open_private(path, binary=True) as out:
        fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
