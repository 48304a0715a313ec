"""HdrHistogram's .hgrm text: the percentile distribution of latencies in ns, as the
HdrHistogram libraries bucket and print it, for hdrhistogram.com's plotter."""
from __future__ import annotations

import math

import numpy as np

from lab.analysis.exports import ExportError, open_private


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
