"""Framing a reassembled byte stream into messages without a loop over messages.

Walking a stream is sequential by nature: each message's length says where the
next one starts. Framers here first find every *candidate* start (a position
whose bytes look like a valid message header, found with whole-array numpy
operations), link each candidate to the candidate its length points at, and
then keep the chain that starts at the stream's first byte. Candidates that
merely look like headers (bytes inside a message) fall off that chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_PRUNE_ROUNDS = 8


@dataclass
class StreamFrames:
    """Messages found in a stream, in stream order."""

    offset: np.ndarray      # int64, start of each message in the stream
    length: np.ndarray      # int64, bytes of each message
    msg_type: np.ndarray    # uint8 (binary order entry) or the MsgType bytes (FIX)
    consumed: int           # stream bytes covered by whole messages, from the start
    stream_bytes: int       # bytes in the stream
    error: str | None       # why framing stopped before the end, None if it did not
    error_offset: int | None

    @property
    def tail_bytes(self) -> int:
        """Bytes after the last whole message: an incomplete message, or the bad bytes."""
        return self.stream_bytes - self.consumed

    def __len__(self) -> int:
        return int(self.offset.size)


def successors(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each candidate, the index of the candidate starting where it ends, or len(starts).

    `starts` is sorted and unique.
    """
    count = starts.size
    if count == 0:
        return np.zeros(0, np.int64)
    where = np.minimum(np.searchsorted(starts, ends), count - 1)
    return np.where(starts[where] == ends, where, count)


def follow_chain(successor: np.ndarray, head: int) -> np.ndarray:
    """Indices of the chain head -> successor[head] -> ..., in order.

    `successor[i]` is the candidate that follows candidate i, or len(successor)
    for none; successors only point forward (to a larger index). A few pruning
    rounds (drop candidates that no live candidate points at) settle ordinary
    streams; pointer doubling finishes adversarial ones.
    """
    count = successor.size
    alive = np.zeros(count, bool)
    alive[head:] = True
    for _ in range(_PRUNE_ROUNDS):
        pointed = np.zeros(count + 1, bool)
        pointed[successor[alive]] = True
        pointed[head] = True
        kept = alive & pointed[:count]
        if np.array_equal(kept, alive):
            return np.flatnonzero(alive)
        alive = kept
    return _chain_by_doubling(successor, head)


def _chain_by_doubling(successor: np.ndarray, head: int) -> np.ndarray:
    """On the chain after round k: every node within 2**(k+1) - 1 steps of head."""
    count = successor.size
    jump = np.append(successor, count)
    on_chain = np.zeros(count + 1, bool)
    on_chain[head] = True
    while True:
        reached = jump[np.flatnonzero(on_chain)]
        if on_chain[reached].all():
            break
        on_chain[reached] = True
        jump = jump[jump]
    return np.flatnonzero(on_chain[:count])


def stream_chain(starts: np.ndarray, ends: np.ndarray, start: int, size: int) -> tuple[np.ndarray, bool, int]:
    """The messages of a stream of `size` bytes from `start`, given every candidate's [start, end):
    (indices of the chain of whole messages, whether a last message runs past the end, the
    stream offset where the whole messages end)."""
    chain = (follow_chain(successors(starts, ends), 0) if starts.size and starts[0] == start
             else np.zeros(0, np.int64))
    incomplete = bool(chain.size) and ends[chain[-1]] > size
    if incomplete:
        chain = chain[:-1]
    return chain, incomplete, int(ends[chain[-1]]) if chain.size else start
