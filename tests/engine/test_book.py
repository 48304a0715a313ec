"""The array-backed L2 book against a naive dict reference on long random update streams."""
import numpy as np
import pytest

from engine.book import ASK, BID, BookError, L2Book


class DictBook:
    """The obvious implementation: a dict per side, sorted on every query."""

    def __init__(self):
        self.sides = {BID: {}, ASK: {}}
        self.crossed_fixes = 0

    def set_level(self, side, price, qty):
        levels = self.sides[side]
        if qty == 0:
            levels.pop(price, None)
            return
        was_best = not levels or (price > max(levels) if side == BID else price < min(levels))
        levels[price] = qty
        other = self.sides[BID + ASK - side]
        if was_best:
            stale = [p for p in other if (p <= price if side == BID else p >= price)]
            for p in stale:
                del other[p]
            self.crossed_fixes += bool(stale)

    def best(self, side):
        levels = self.sides[side]
        if not levels:
            return None
        p = max(levels) if side == BID else min(levels)
        return p, levels[p]

    def depth(self, side, n):
        levels = self.sides[side]
        return [(p, levels[p]) for p in sorted(levels, reverse=side == BID)[:n]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_dict_reference_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    tick = 500_000                                   # 0.005 in 1e-8 units
    book, ref = L2Book(tick, window=256), DictBook()  # small window: forces re-centring
    mid = 100_000 * tick
    for step in range(30_000):
        mid += int(rng.integers(-3, 4)) * tick * (40 if rng.random() < 0.002 else 1)   # drift and jumps
        side = int(rng.integers(BID, ASK + 1))
        offset = int(rng.geometric(0.25))
        price = mid - offset * tick if side == BID else mid + offset * tick
        if rng.random() < 0.03:
            price = mid + (offset if side == BID else -offset) * tick                    # crossing update
        qty = 0 if rng.random() < 0.35 else int(rng.integers(1, 1000))
        book.set_level(side, price, qty)
        ref.set_level(side, price, qty)
        assert book.best_bid() == ref.best(BID), step
        assert book.best_ask() == ref.best(ASK), step
        if step % 97 == 0:
            assert book.depth(BID, 5) == ref.depth(BID, 5)
            assert book.depth(ASK, 5) == ref.depth(ASK, 5)
        assert not book.is_crossed()
    assert book.crossed_fixes == ref.crossed_fixes > 0
    assert book.window > 256                          # it grew when the book spread out


def test_bad_updates_raise_book_error():
    book = L2Book(100)
    for args in ((BID, 150, 1), (0, 100, 1), (ASK, 100, -5)):
        with pytest.raises(BookError):
            book.set_level(*args)
    with pytest.raises(BookError):
        L2Book(0)
