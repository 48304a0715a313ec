"""Strategies shared by the property tests: damaged copies of valid bytes.

A parser that is only ever fed st.binary() sees little beyond its first check (a magic, a
length); mutations of a valid input reach the checks behind it.
"""
from __future__ import annotations

import os

from hypothesis import strategies as st

# The suite runs few examples (tests/conftest.py's "ci" profile: the same ones every run). To hunt
# for bugs: HYPOTHESIS_PROFILE=explore PROPERTY_EXAMPLES=20 python -m pytest tests/properties
SCALE = int(os.environ.get("PROPERTY_EXAMPLES", "1"))


def examples(count: int) -> int:
    """max_examples for a test: `count` in the suite, PROPERTY_EXAMPLES times as many when hunting."""
    return count * SCALE

# Values that sit on the edges of length and count fields.
EDGE_WORDS = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def mutated(draw, valid: st.SearchStrategy, max_mutations: int = 4) -> bytes:
    """A valid byte string with a few damages: bit flips, bytes set, 1/2/4-byte words set to
    an edge value, ranges deleted or duplicated, random bytes inserted, truncation."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(("flip", "byte", "word", "delete", "duplicate", "insert", "truncate")))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
            continue
        if not data:
            continue
        at = min(at, len(data) - 1)
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "word":
            width = draw(st.sampled_from((1, 2, 4)))
            value = draw(st.sampled_from(EDGE_WORDS)) & ((1 << 8 * width) - 1)
            order = draw(st.sampled_from(("little", "big")))
            data[at:at + width] = value.to_bytes(width, order)[:len(data) - at]
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            end = at + draw(st.integers(1, 16))
            data[at:at] = data[at:end]
        else:
            del data[at:]
    return bytes(data)


def any_bytes(valid: st.SearchStrategy, max_size: int = 400) -> st.SearchStrategy:
    """Arbitrary bytes, a valid input, or a damaged valid input."""
    return st.one_of(st.binary(max_size=max_size), valid, mutated(valid))
