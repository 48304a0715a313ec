"""Matching orders to their MD trigger: counts of matches, misses and duplicates."""
import numpy as np
import pytest

from lab.analysis.match import FIX_TAG, NEAREST, TRIGGER, MatchError, MatchMode, by_trigger, nearest, parse_match


def test_parse_match():
    assert parse_match("trigger") == MatchMode(TRIGGER)
    assert parse_match("nearest") == MatchMode(NEAREST)
    assert parse_match("fix-tag:9001") == MatchMode(FIX_TAG, 9001)
    assert str(parse_match("fix-tag:52")) == "fix-tag:52"
    for bad in ("", "fix-tag:", "fix-tag:0", "fix-tag:x", "near", "fix-tag:-1"):
        with pytest.raises(MatchError):
            parse_match(bad)


def test_by_trigger_counts_misses_and_duplicates():
    md_seq = np.array([10, 11, 12, 13, 11])            # seq 11 arrives twice (an A/B feed)
    md_time = np.array([100, 200, 300, 400, 210])
    trigger = np.array([12, 11, 99, 12, 10, -1])        # 99 never seen; -1 unknown; 12 twice
    order_time = np.array([350, 260, 500, 340, 150, 600])
    m = by_trigger(md_seq, md_time, trigger, order_time)
    assert m.md.tolist() == [0, 1, 2]                     # in t_MD order: seq 10, 11 (first arrival), 12
    assert m.order.tolist() == [4, 1, 3]                  # for 12 the earlier order (time 340) wins
    assert m.unmatched_md.tolist() == [3]
    assert m.unmatched_orders.tolist() == [2, 5]
    assert m.duplicate_orders.tolist() == [0]
    assert m.duplicate_md.tolist() == [4]
    assert m.duplicates == 2


def test_unknown_md_seq_is_neither_matched_nor_duplicate():
    m = by_trigger(np.array([-1, -1, 4]), np.array([1, 2, 3]), np.array([-1, 4]), np.array([5, 6]))
    assert m.md.tolist() == [2] and m.order.tolist() == [1]
    assert m.unmatched_md.tolist() == [0, 1] and m.duplicate_md.size == 0 and m.unmatched_orders.tolist() == [0]


@pytest.mark.parametrize("scale", [1, 10**6])   # dense seqs (a direct table) and sparse ones (a search)
def test_by_trigger_finds_seqs_dense_or_sparse(scale):
    md_seq = np.array([10, 11, 12, 13, 11]) * scale
    trigger = np.array([12 * scale, 11 * scale, 99 * scale, 12 * scale, 10 * scale, -1, 14 * scale, 2**62])
    order_time = np.array([350, 260, 500, 340, 150, 600, 700, 800])
    m = by_trigger(md_seq, np.array([100, 200, 300, 400, 210]), trigger, order_time)
    assert m.md.tolist() == [0, 1, 2] and m.order.tolist() == [4, 1, 3]
    assert m.unmatched_orders.tolist() == [2, 5, 6, 7] and m.unmatched_md.tolist() == [3]


def test_by_trigger_with_nothing():
    m = by_trigger(np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([5]), np.array([1]))
    assert m.md.size == 0 and m.unmatched_orders.tolist() == [0]
    m = by_trigger(np.array([5]), np.array([1]), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert m.unmatched_md.tolist() == [0] and m.order.size == 0


def test_nearest_pairs_each_md_with_the_first_order_after_it():
    md_time = np.array([100, 200, 300, 400])
    order_time = np.array([250, 50, 260, 420, 300])      # 50: before any MD; 300: not after MD 300
    m = nearest(md_time, order_time)
    assert m.md.tolist() == [1, 3]
    assert m.order.tolist() == [0, 3]
    assert m.unmatched_orders.tolist() == [1]
    assert m.duplicate_orders.tolist() == [2, 4]          # 260 and 300 come after MD 200's first order
    assert m.unmatched_md.tolist() == [0, 2]
    assert m.duplicates == 2


def test_many_triggers_against_a_dictionary_model():
    rng = np.random.default_rng(5)
    md_seq = rng.permutation(5000)[:3000]
    md_time = np.sort(rng.integers(0, 10**9, md_seq.size))
    trigger = rng.choice(np.concatenate([md_seq, [10**7, 10**7 + 1]]), 2000)
    order_time = rng.integers(0, 10**9, trigger.size)
    m = by_trigger(md_seq, md_time, trigger, order_time)
    first_order = {}
    for i in np.lexsort((np.arange(trigger.size), order_time)):
        first_order.setdefault(int(trigger[i]), int(i))
    position = {int(s): i for i, s in enumerate(md_seq)}
    want = sorted((position[s], o) for s, o in first_order.items() if s in position)
    assert sorted(zip(m.md.tolist(), m.order.tolist())) == want
    assert m.unmatched_orders.size == int(np.isin(trigger, [10**7, 10**7 + 1]).sum())
    assert m.md.size + m.unmatched_md.size == md_seq.size
    assert m.order.size + m.duplicate_orders.size + m.unmatched_orders.size == trigger.size
