"""Ragged gathers against plain slicing."""
import numpy as np
import pytest

from lab.analysis.gather import gather_ragged

rng = np.random.default_rng(3)


def test_ragged_matches_slicing_for_every_shape():
    data = rng.integers(0, 256, 20_000, dtype=np.uint8)
    lengths = np.concatenate([rng.integers(0, 65, 3000), rng.integers(64, 320, 200), [0, 1, 192]])
    rng.shuffle(lengths)
    starts = rng.integers(0, data.size - lengths + 1)
    starts[-1] = data.size - lengths[-1]                       # one range ends exactly at the end
    out, where = gather_ragged(data, starts, lengths)
    assert out.tobytes() == b"".join(data[s:s + n].tobytes() for s, n in zip(starts, lengths))
    assert where.tolist() == (np.cumsum(lengths) - lengths).tolist()


def test_ragged_of_nothing():
    out, where = gather_ragged(np.zeros(5, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert out.size == 0 and where.size == 0


@pytest.mark.parametrize("start, length", [(3, 3), (-1, 1), (6, 0), (0, -1)])
def test_ragged_refuses_ranges_outside_the_data(start, length):
    with pytest.raises(ValueError, match="outside"):
        gather_ragged(np.zeros(5, np.uint8), np.array([0, start]), np.array([2, length]))
