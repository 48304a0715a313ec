"""The array-backed L2 book against a naive dict reference on long random update streams."""
import numpy as np
import pytest

from engine.book import ASK, BID, BookError, L2Book
from engine.protocol import md


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


def _datagram(seq, updates):
    """An MD datagram of (side, action, price, qty) updates; the first two must be a bid then an ask."""
    return md.MdDatagram(1, seq, 7, 0, tuple(md.L2Update(*u) for u in updates)).encode()


@pytest.mark.parametrize("seed", [4, 5])
def test_apply_matches_set_level_per_entry(seed):
    rng = np.random.default_rng(seed)
    tick = 500_000
    book, per_entry, ref = L2Book(tick, window=64), L2Book(tick, window=64), DictBook()
    mid = 100_000 * tick
    for seq in range(3_000):
        mid += int(rng.integers(-3, 4)) * tick * (40 if rng.random() < 0.01 else 1)
        updates = []
        for k in range(int(rng.integers(2, 8))):
            side = (BID, ASK)[k] if k < 2 else int(rng.integers(BID, ASK + 1))
            offset = int(rng.geometric(0.3)) * (-1 if rng.random() < 0.03 else 1)      # some crossing
            price = mid - offset * tick if side == BID else mid + offset * tick
            action = md.DELETE if rng.random() < 0.3 else md.SET
            updates.append((side, action, price, int(rng.integers(1, 1000))))
        top = book.apply(_datagram(seq, updates), len(updates))
        for side, action, price, qty in updates:
            per_entry.set_level(side, price, qty if action == md.SET else 0)
            ref.set_level(side, price, qty if action == md.SET else 0)
        assert top == per_entry.top() == book.top(), seq
        assert book.best_bid() == ref.best(BID) and book.best_ask() == ref.best(ASK), seq
        assert book.depth(BID, 10) == ref.depth(BID, 10) and book.depth(ASK, 10) == ref.depth(ASK, 10), seq
        assert book.window == per_entry.window
    assert book.crossed_fixes == per_entry.crossed_fixes == ref.crossed_fixes > 0
    assert book.window > 64


def test_apply_refuses_a_short_buffer():
    book = L2Book(100)
    gram = _datagram(1, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7)])
    for payload, count in ((gram, 3), (gram[:-1], 2), (gram[:31], 0), (b"", 1), (gram, 1 << 62)):
        with pytest.raises(ValueError):
            book.apply(payload, count)
    assert book.top() == (0, 0, 0, 0)                 # nothing was read
    assert book.apply(gram, 2) == (1000, 5, 1100, 7)


def test_apply_raises_book_error_on_a_bad_side_and_keeps_earlier_entries():
    book = L2Book(100)
    gram = bytearray(_datagram(1, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7), (BID, md.SET, 900, 2)]))
    gram[md.HEADER_SIZE + 2 * md.UPDATE_SIZE] = 3      # the third entry's side
    with pytest.raises(BookError, match="side must be 1"):
        book.apply(bytes(gram), 3)
    assert book.top() == (1000, 5, 1100, 7)
