"""Many variable-length byte ranges of a buffer, copied back to back into one new buffer."""
from __future__ import annotations

import numpy as np

from lab.analysis._kernels import copy_ranges


def gather_ragged(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy many variable-length byte ranges, in order, into one new buffer.

    Returns (buffer, where): range i is buffer[where[i]: where[i] + lengths[i]].
    Every range must lie inside `data` (ValueError otherwise). The copy is one
    memcpy per range in the C kernel (lab/analysis/_kernels.c).
    """
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    where = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint8)
    copy_ranges(data, starts, lengths, out)
    return out, where
