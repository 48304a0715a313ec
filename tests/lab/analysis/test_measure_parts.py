"""A capture read in parts (epochs) gives the answer of one pass, in memory that does not
grow with the file.

The captures come from lab.synth, whose truth is independent of the reader: split,
swapped and retransmitted orders cross the part boundaries at every offset.
"""
import tracemalloc

import numpy as np
import pytest

from lab.analysis.match import parse_match
from lab.analysis.measure import MeasureOptions, measure
from lab.synth import TRUTH_COLUMNS, SynthConfig, synthesize, write_capture

RATE = 10**10
WINDOW_NS = 1_000_000          # MD matchable for 1 ms: far above any synth tick-to-trade
CASES = [("pcap", "hardware", "binary"), ("pcapng", "software", "binary"), ("pcapng", "hardware", "fix")]


def capture(tmp_path, triggers, fmt="pcapng", convention="hardware", orders="binary", seed=5):
    synthesis = synthesize(SynthConfig(triggers=triggers, seed=seed, order_format=orders))
    path = tmp_path / f"{triggers}-{convention}-{orders}.{fmt}"
    write_capture(synthesis, str(path), fmt, convention)
    return path, synthesis


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fmt,convention,orders", CASES)
@pytest.mark.parametrize("match", ["trigger", "nearest"])
@pytest.mark.parametrize("epoch_packets", [97, 500])
def test_parts_agree_with_one_pass(tmp_path, fmt, convention, orders, match, epoch_packets):
    path, synthesis = capture(tmp_path, 300, fmt, convention, orders)
    options = dict(convention=convention, line_rate_bps=RATE, match=parse_match(match), match_window_ns=WINDOW_NS)
    whole = measure(path, MeasureOptions(**options))
    parts = measure(path, MeasureOptions(**options, batch_packets=31, epoch_packets=epoch_packets))
    assert whole.parts == 1 and parts.parts > 2
    assert same(parts.per_trigger, whole.per_trigger)
    assert (parts.counts, parts.tcp) == (whole.counts, whole.tcp)
    assert all(same(parts.misses[kind], whole.misses[kind]) for kind in whole.misses)
    if match == "trigger":                   # and the answer is the synth's truth
        truth = synthesis.truth
        by_seq = np.argsort(parts.per_trigger["md_seq"])
        assert parts.counts["matched"] == 300 and parts.tcp["duplicate_bytes"] > 0
        for column in TRUTH_COLUMNS:
            assert parts.per_trigger[column][by_seq].tolist() == np.asarray(truth[column]).tolist(), column


def test_a_sink_takes_the_rows_and_only_tick_to_trade_is_kept(tmp_path):
    path, _ = capture(tmp_path, 200)
    whole = measure(path, MeasureOptions(line_rate_bps=RATE))
    chunks = []
    parts = measure(path, MeasureOptions(line_rate_bps=RATE, batch_packets=64, epoch_packets=256,
                                         match_window_ns=WINDOW_NS, per_trigger_sink=chunks.append))
    assert len(chunks) == parts.parts and list(parts.per_trigger) == ["tick_to_trade_ns"]
    assert same({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, whole.per_trigger)
    assert np.array_equal(parts.per_trigger["tick_to_trade_ns"], whole.per_trigger["tick_to_trade_ns"])


def test_an_order_whose_market_data_left_the_window_is_unmatched(tmp_path):
    path, _ = capture(tmp_path, 200)
    whole = measure(path, MeasureOptions())
    tiny = measure(path, MeasureOptions(batch_packets=16, epoch_packets=16, match_window_ns=0))
    assert whole.counts["unmatched_orders"] == 0 < tiny.counts["unmatched_orders"]
    assert tiny.counts["matched"] + tiny.counts["unmatched_orders"] == whole.counts["matched"]


def peak_traced_bytes(path, epoch_packets):
    tracemalloc.start()
    try:
        result = measure(path, MeasureOptions(line_rate_bps=RATE, batch_packets=1024, epoch_packets=epoch_packets,
                                              match_window_ns=WINDOW_NS, per_trigger_sink=lambda rows: None))
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path):
    """numpy reports its buffers to tracemalloc, so the traced peak is the measurement's heap
    (the capture itself is memory-mapped, outside it). A file 4x longer must not need more than
    the small one's heap plus its 8 bytes per trigger; read in one pass, it does."""
    small, _ = capture(tmp_path, 1_500)
    large, _ = capture(tmp_path, 6_000)
    small_peak, small_result = peak_traced_bytes(small, 4096)
    large_peak, large_result = peak_traced_bytes(large, 4096)
    assert large_result.packets > 3.5 * small_result.packets and large_result.parts > 2 * small_result.parts
    assert large_peak < small_peak * 1.25 + 8 * 6_000
    assert large_result.carried_peak["order_bytes"] < 4 * 1024      # unfinished messages only
    # read in one pass, the same files do grow: the check above can fail
    one_small, _ = peak_traced_bytes(small, 1 << 21)
    one_large, _ = peak_traced_bytes(large, 1 << 21)
    assert one_large > 2.5 * one_small
