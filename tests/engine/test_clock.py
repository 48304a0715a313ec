"""rdtscp and calibration against CLOCK_REALTIME."""
import time

import numpy as np

from engine.clock import HAS_RDTSCP, Calibration, calibrate, fit, tsc


def test_tsc_is_monotonic():
    stamps = [tsc() for _ in range(1000)]
    assert all(b >= a for a, b in zip(stamps, stamps[1:]))


def test_fit_recovers_a_known_clock_exactly():
    # a synthetic counter at 2.5 GHz starting at 10**12 counts, realtime from 1.7e18 ns
    hz, t0, c0 = 2_500_000_000, 1_700_000_000_000_000_000, 10**12
    real = t0 + np.arange(0, 200_000_000, 500_000, dtype=np.int64)      # every 0.5 ms for 0.2 s
    counts = c0 + (real - t0) * hz // 10**9
    raw = np.stack([counts - 50, real, counts + 50], axis=1)
    cal = fit(raw)
    assert cal.frequency_hz == hz
    assert abs(cal.drift_ppm) < 0.01
    assert cal.residual_ns_p99 <= 1
    assert cal.to_ns(c0 + 3 * hz) == t0 + 3 * 10**9
    assert np.array_equal(cal.to_ns(np.array([c0, c0 + hz // 2])), np.array([t0, t0 + 500_000_000]))


def test_calibration_on_this_machine_maps_tsc_to_realtime():
    cal = calibrate(duration_s=0.05, samples=100)
    assert cal.rdtscp == HAS_RDTSCP
    assert 10**8 < cal.frequency_hz < 10**10
    now_ns = time.time_ns()
    assert abs(cal.to_ns(tsc()) - now_ns) < 1_000_000      # within 1 ms of the system clock
    assert Calibration.from_dict(cal.to_dict()) == cal
