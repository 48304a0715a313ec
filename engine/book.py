"""L2 order books: aggregate quantity per price level, per side.

Array-backed: each side is a ladder of quantities indexed by price tick, so a
level update is one store and the best price moves by a short scan only when
the best level empties. The window re-centres (doubling if needed) when a price
falls outside it. Prices are int64 in 1e-8 units (engine.protocol), on a tick grid.

Crossed-book guard: when a new bid reaches the best ask (or a new ask the best
bid), the stale opposite levels are cleared, as a missed delete is the usual
cause; `crossed_fixes` counts them.

The ladder lives in C (engine/_book.c): measured speed demands it. Its `apply`
takes a whole datagram's update entries and returns the top in one call:
MarketDataHandler.decode of a two-update datagram went from 1940 to 600 ns (warm,
timeit; set_level 250 -> 30 ns, top 165 -> 75 ns).
"""
from __future__ import annotations

from engine._book import BookError, L2Book   # re-exported: the book itself is C

BID, ASK = 1, 2                 # as on the wire (engine.protocol.md)


class Books(dict):
    """All books of the engine, by (venue, instrument); a book is made on first use."""

    def __init__(self, tick_for=lambda venue, instrument: 1):
        super().__init__()
        self._tick_for = tick_for

    def __missing__(self, key: tuple[int, int]) -> L2Book:
        book = self[key] = L2Book(self._tick_for(*key))
        return book
