"""Window and ragged gathers against plain slicing."""
import numpy as np

from lab.analysis.gather import PIECE, gather_fields, gather_ragged, gather_windows

rng = np.random.default_rng(3)


def test_windows_near_the_end_read_zeros():
    data = np.arange(1, 11, dtype=np.uint8)
    windows = gather_windows(data, np.array([0, 6, 9]), 4).view(np.uint8).reshape(-1, 4)
    assert windows.tolist() == [[1, 2, 3, 4], [7, 8, 9, 10], [10, 0, 0, 0]]
    small = gather_windows(data[:2], np.array([1]), 4).view(np.uint8)
    assert small.tolist() == [2, 0, 0, 0]


def test_fields_are_big_endian_as_described():
    data = np.frombuffer(bytes.fromhex("0102030405060708"), np.uint8)
    dtype = np.dtype({"names": ["a", "b"], "formats": [">u2", "<u4"], "offsets": [0, 4], "itemsize": 8})
    record = gather_fields(data, np.array([0]), dtype)[0]
    assert (int(record["a"]), int(record["b"])) == (0x0102, 0x08070605)


def test_ragged_matches_slicing_for_every_shape():
    data = rng.integers(0, 256, 20_000, dtype=np.uint8)
    lengths = np.concatenate([rng.integers(0, PIECE + 1, 3000), rng.integers(PIECE, 5 * PIECE, 200), [0, 1, 3 * PIECE]])
    rng.shuffle(lengths)
    starts = rng.integers(0, data.size - lengths + 1)
    starts[-1] = data.size - lengths[-1]                       # one range ends exactly at the end
    out, where = gather_ragged(data, starts, lengths)
    assert out.tobytes() == b"".join(data[s:s + n].tobytes() for s, n in zip(starts, lengths))
    assert where.tolist() == (np.cumsum(lengths) - lengths).tolist()


def test_ragged_of_nothing():
    out, where = gather_ragged(np.zeros(5, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert out.size == 0 and where.size == 0
