"""The engine's clock: rdtscp stamps, calibrated against CLOCK_REALTIME.

Hot-path code calls `tsc()` and stores raw counts. A Calibration, fitted from
bracketed samples (tsc, realtime, tsc), turns counts into integer nanoseconds
since the epoch later, off the hot path.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from engine import _native

HAS_RDTSCP = bool(_native.HAS_RDTSCP)
if not HAS_RDTSCP:
    warnings.warn("no rdtscp on this CPU: engine stamps fall back to CLOCK_MONOTONIC_RAW", RuntimeWarning,
                  stacklevel=2)

tsc = _native.rdtscp
paired_sample = _native.paired_sample


@dataclass(frozen=True)
class Calibration:
    """ns = base_ns + (count - base_tsc) * 1e9 / frequency_hz, in integer arithmetic."""
    base_tsc: int
    base_ns: int
    frequency_hz: int
    residual_ns_p99: float        # |fit - realtime| of the kept samples, 99th percentile
    bracket_ns_median: float      # how wide a (tsc, realtime, tsc) bracket is
    drift_ppm: float              # frequency of the second half of the samples against the first
    samples: int
    rdtscp: bool = HAS_RDTSCP

    def to_ns(self, counts):
        """Counts (int or int64 array) -> ns since the epoch (int or int64 array), exactly."""
        hz = self.frequency_hz
        if isinstance(counts, np.ndarray):
            delta = counts.astype(np.int64) - np.int64(self.base_tsc)
            whole, part = np.divmod(delta, np.int64(hz))
            return self.base_ns + whole * 10**9 + (part * 10**9) // hz
        whole, part = divmod(int(counts) - self.base_tsc, hz)
        return self.base_ns + whole * 10**9 + part * 10**9 // hz

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(**data)


def calibrate(duration_s: float = 0.2, samples: int = 400) -> Calibration:
    """Fit TSC against CLOCK_REALTIME from bracketed samples spread over `duration_s`.

    The narrowest half of the brackets (least disturbed by preemption) are kept.
    """
    pause = duration_s / samples
    raw = []
    for _ in range(samples):
        raw.append(paired_sample())
        time.sleep(pause)
    return fit(np.array(raw, dtype=np.int64))


def fit(raw: np.ndarray) -> Calibration:
    """raw: rows of (tsc_before, realtime_ns, tsc_after)."""
    before, real, after = raw[:, 0], raw[:, 1], raw[:, 2]
    width = after - before
    keep = width <= np.median(width)
    mid = before[keep] + width[keep] // 2
    real = real[keep]
    base_tsc, base_ns = int(mid[0]), int(real[0])
    x = (mid - base_tsc).astype(np.float64)                # fitting only; results are ints
    y = (real - base_ns).astype(np.float64)
    slope, intercept = np.polyfit(x, y, 1)                  # ns per count
    frequency = int(round(1e9 / slope))
    half = len(x) // 2
    drift = 0.0
    if half >= 4:
        first = np.polyfit(x[:half], y[:half], 1)[0]
        second = np.polyfit(x[half:], y[half:], 1)[0]
        drift = float((first / second - 1.0) * 1e6)
    calibration = Calibration(base_tsc, base_ns + int(round(intercept)), frequency, 0.0,
                              float(np.median(width[keep]) * slope), drift, int(keep.sum()))
    residual = np.abs(calibration.to_ns(mid) - real)
    return Calibration(**{**calibration.to_dict(), "residual_ns_p99": float(np.percentile(residual, 99))})
