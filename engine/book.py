"""L2 order books: aggregate quantity per price level, per side.

Array-backed: each side is a ladder of quantities indexed by price tick, so a
level update is one store and the best price moves by a short scan (numpy, in
C) only when the best level empties. A ladder is an array.array (fast scalar
stores and loads) with a numpy view of the same memory for the scans. The window re-centres when a price falls
outside it. Prices are int64 in 1e-8 units (engine.protocol), on a tick grid.

Crossed-book guard: when a new bid reaches the best ask (or a new ask the best
bid), the stale opposite levels are cleared, as a missed delete is the usual
cause; `crossed_fixes` counts them.
"""
from __future__ import annotations

from array import array

import numpy as np

BID, ASK = 1, 2                 # as on the wire (engine.protocol.md)


class BookError(ValueError):
    """An update the book cannot apply (off the tick grid, negative quantity, bad side)."""


class L2Book:
    def __init__(self, tick: int, window: int = 1 << 14):
        if tick <= 0:
            raise BookError(f"tick must be positive, got {tick}")
        self.tick, self.window = tick, window
        self.base = None                     # price of ladder index 0
        self.qty = [None, _ladder(window), _ladder(window)]   # by side
        self.view = [None] + [np.frombuffer(q, np.int64) for q in self.qty[1:]]
        self.best = [None, -1, -1]           # ladder index of the best bid / ask, -1 when empty
        self.crossed_fixes = 0

    # -- updates ------------------------------------------------------------------------
    def set_level(self, side: int, price: int, qty: int) -> None:
        """Set the quantity at a price; qty 0 deletes the level."""
        tick = self.tick
        if side not in (BID, ASK):
            raise BookError(f"side must be 1 (bid) or 2 (ask), got {side}")
        if qty < 0:
            raise BookError(f"negative quantity {qty}")
        if price % tick:
            raise BookError(f"price {price} is not on the {tick} tick grid")
        base = self.base
        if base is None:
            if not qty:
                return
            base = self.base = price - (self.window // 2) * tick
        i = (price - base) // tick
        if not 0 <= i < self.window:
            self._recentre(price)
            i = (price - self.base) // tick
        self.qty[side][i] = qty
        best = self.best[side]
        if qty:
            if best < 0 or (i > best if side == BID else i < best):
                self.best[side] = i
                self._uncross(side, i)
        elif i == best:
            self.best[side] = self._scan(side, i)

    def delete_level(self, side: int, price: int) -> None:
        self.set_level(side, price, 0)

    def clear(self) -> None:
        for side in (BID, ASK):
            self.view[side][:] = 0
        self.best = [None, -1, -1]

    # -- queries ------------------------------------------------------------------------
    def best_bid(self) -> tuple[int, int] | None:
        return self._level(BID, self.best[BID])

    def best_ask(self) -> tuple[int, int] | None:
        return self._level(ASK, self.best[ASK])

    def top(self) -> tuple[int, int, int, int]:
        """(bid price, bid qty, ask price, ask qty) of the best levels; 0, 0 for an empty side."""
        _, b, a = self.best
        base, tick = self.base, self.tick
        return (base + b * tick if b >= 0 else 0, self.qty[BID][b] if b >= 0 else 0,
                base + a * tick if a >= 0 else 0, self.qty[ASK][a] if a >= 0 else 0)

    def depth(self, side: int, levels: int = 5) -> list[tuple[int, int]]:
        """The best `levels` (price, qty) pairs, best first."""
        best = self.best[side]
        if best < 0:
            return []
        ladder = self.view[side]
        if side == BID:
            idx = np.flatnonzero(ladder[: best + 1])[::-1][:levels]
        else:
            idx = np.flatnonzero(ladder[best:])[:levels] + best
        return [(self.base + int(i) * self.tick, int(ladder[i])) for i in idx]

    def is_crossed(self) -> bool:
        b, a = self.best[BID], self.best[ASK]
        return b >= 0 and a >= 0 and b >= a

    # -- internals ----------------------------------------------------------------------
    def _level(self, side: int, i: int):
        return None if i < 0 else (self.base + i * self.tick, self.qty[side][i])

    def _scan(self, side: int, emptied: int) -> int:
        ladder = self.view[side]
        if side == BID:
            below = np.flatnonzero(ladder[:emptied])
            return int(below[-1]) if len(below) else -1
        above = np.flatnonzero(ladder[emptied + 1:])
        return int(above[0]) + emptied + 1 if len(above) else -1

    def _uncross(self, side: int, i: int) -> None:
        other = BID + ASK - side
        best = self.best[other]
        if best < 0 or (best > i if side == BID else best < i):
            return
        ladder = self.view[other]
        if side == BID:                       # asks at or below the new bid are stale
            ladder[: i + 1] = 0
            self.best[ASK] = self._scan(ASK, i)
        else:
            ladder[i:] = 0
            self.best[BID] = self._scan(BID, i)
        self.crossed_fixes += 1

    def _recentre(self, price: int) -> None:
        """Move (and if needed grow) the window so that every level and `price` fit."""
        used = {side: np.flatnonzero(self.view[side]) for side in (BID, ASK)}
        lows = [self.base + int(u[0]) * self.tick for u in used.values() if len(u)] + [price]
        highs = [self.base + int(u[-1]) * self.tick for u in used.values() if len(u)] + [price]
        span = (max(highs) - min(lows)) // self.tick + 1
        window = self.window
        while window < 2 * span:
            window *= 2
        new_base = (min(lows) + max(highs)) // 2 // self.tick * self.tick - (window // 2) * self.tick
        shift = (self.base - new_base) // self.tick
        for side in (BID, ASK):
            ladder = _ladder(window)
            moved = np.frombuffer(ladder, np.int64)
            idx = used[side]
            moved[idx + shift] = self.view[side][idx]
            self.qty[side], self.view[side] = ladder, moved
            if self.best[side] >= 0:
                self.best[side] += shift
        self.base, self.window = new_base, window


def _ladder(levels: int) -> array:
    return array("q", bytes(8 * levels))


class Books(dict):
    """All books of the engine, by (venue, instrument); a book is made on first use."""

    def __init__(self, tick_for=lambda venue, instrument: 1):
        super().__init__()
        self._tick_for = tick_for

    def __missing__(self, key: tuple[int, int]) -> L2Book:
        book = self[key] = L2Book(self._tick_for(*key))
        return book
