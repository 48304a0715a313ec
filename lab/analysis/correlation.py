"""Put the engine's TSC stamps on the capture's clock, and check the result.

The capture's stamps and the kernel's socket stamps are CLOCK_REALTIME ns; the
engine's app stamps are raw TSC counts. `lab run` takes bracketed (tsc, realtime,
tsc) samples before the feed starts and after the engine stops; one fit over both
maps TSC to the capture clock for the whole run (engine.clock.fit: the narrowest
half of the brackets, a least-squares line).

Reported:
- residual_p99_ns: |fit - realtime| over the kept samples, 99th percentile;
- drift_ppm: how far the start-only fit has drifted by the end samples, per
  elapsed time (the TSC's frequency error against CLOCK_REALTIME over the run);
- a check against matched events: kernel RX -> app_in of every order, mapped. Its
  lower envelope (the fastest wake-ups) must be >= 0 and must not trend: the
  envelope's slope over the run is reported in ppm;
- causality violations along each trigger's chain of stamps, which must be 0.
"""
from __future__ import annotations

import numpy as np

from engine.clock import Calibration, fit
from lab.errors import LabError

ENVELOPE_WINDOWS = 8


class CorrelationError(LabError):
    """Clock samples that cannot give a mapping."""


def run_calibration(start: list, end: list) -> tuple[Calibration, dict]:
    """The run-wide TSC -> CLOCK_REALTIME fit and its residual and drift."""
    first, last = np.asarray(start, np.int64), np.asarray(end, np.int64)
    if first.ndim != 2 or last.ndim != 2 or first.shape[1:] != (3,) or last.shape[1:] != (3,) \
            or len(first) < 8 or len(last) < 8:
        raise CorrelationError("the run info's clock samples are missing or malformed")
    both = fit(np.concatenate([first, last]))
    early = fit(first)
    mid = last[:, 0] + (last[:, 2] - last[:, 0]) // 2
    keep = (last[:, 2] - last[:, 0]) <= np.median(last[:, 2] - last[:, 0])
    error = early.to_ns(mid[keep]) - last[keep, 1]
    elapsed = int(np.median(last[keep, 1])) - int(np.median(first[:, 1]))
    drift = float(np.median(error)) / elapsed * 1e6 if elapsed > 0 else 0.0
    return both, {"residual_p99_ns": both.residual_ns_p99, "drift_ppm": drift, "samples": both.samples,
                  "span_ns": elapsed, "frequency_hz": both.frequency_hz}


def envelope(kernel_rx_ns: np.ndarray, app_in_ns: np.ndarray) -> dict:
    """The lower envelope of kernel RX -> app_in over the run: its floor and its trend."""
    delay = app_in_ns - kernel_rx_ns
    if len(delay) < 2 * ENVELOPE_WINDOWS:
        return {"min_ns": int(delay.min()) if len(delay) else None, "slope_ppm": None}
    order = np.argsort(kernel_rx_ns, kind="stable")
    windows = np.array_split(order, ENVELOPE_WINDOWS)
    floor = np.array([delay[w].min() for w in windows], np.float64)
    when = np.array([kernel_rx_ns[w[np.argmin(delay[w])]] for w in windows], np.float64)
    slope = np.polyfit(when - when[0], floor, 1)[0] if np.ptp(when) > 0 else 0.0
    return {"min_ns": int(delay.min()), "window_floors_ns": [int(x) for x in floor], "slope_ppm": float(slope * 1e6)}


def causality(chain: dict[str, np.ndarray]) -> dict:
    """Each later stamp of the chain must not come before the one before it."""
    names = list(chain)
    violations = {f"{a} > {b}": int(np.count_nonzero(chain[a] > chain[b])) for a, b in zip(names, names[1:])}
    return {"causality_violations": sum(violations.values()), "by_pair": violations}
