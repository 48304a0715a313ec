"""L2 order books: aggregate quantity per price level, per side.

Array-backed: each side is a ladder of quantities indexed by price tick, so a
level update is one store and the best price moves by a short scan only when
the best level empties. The window re-centres (doubling if needed) when a price
falls outside it, up to 2**20 levels: a price farther from the book's levels is
refused (BookError; decode_datagram drops its datagram as "price out of range", an
ITCH message is dropped as "book refused the price"). Unbounded, one far price made
a window of gigabytes (issue 16). Prices are int64 in 1e-8 units (engine.protocol), on a tick grid.

Crossed-book guard: when a new bid reaches the best ask (or a new ask the best
bid), the stale opposite levels are cleared, as a missed delete is the usual
cause; `crossed_fixes` counts them.

The ladder lives in C (engine/_book.c): measured speed demands it. So does the
datagram: `decode_datagram` checks the header and its lengths, applies the updates
to their book, counts the feed's gaps on it and returns the MarketUpdate fields in
one call. MarketDataHandler.decode of a two-update datagram went from 1940 ns (all
Python) to 600 (the ladder in C) to 300 (this; warm, in-process timer).

An ITCH 5.0 feed (MoldUDP64) is an L3 book: `decode_itch` walks a packet's messages, keeps each
live order by (stock locate, order reference) in the venue's `ItchOrders` (a hash table in C,
bounded at creation), sums their shares into the same ladders, and returns one MarketUpdate per
instrument whose top of book moved or that traded. Bad messages are counted by reason in
`ItchOrders.dropped` and dropped.
"""
from __future__ import annotations

from engine import _book
from engine._book import BookError, DatagramError, ItchOrders, L2Book, decode_itch   # re-exported: they are C
from engine._book import decode as decode_datagram
from engine.protocol import itch50, md

__all__ = ["ASK", "BID", "BookError", "Books", "DatagramError", "ItchOrders", "L2Book", "decode_datagram", "decode_itch"]
BID, ASK = md.BID, md.ASK       # the book's sides are the wire's
_book.set_layout(md.PROTOCOL.book_layout)
_book.set_itch_layout(itch50.PROTOCOL.book_layout)


class Books(dict):
    """The engine's books, by (venue, instrument): one for each instrument the config names,
    made on first use. A datagram for any other (venue, instrument) is dropped as
    "unknown instrument": an id the config does not name must cost no memory (a book is
    about 140 KB, and random ids at 50k datagrams/s once grew the engine by 1.4 GB in 4 s)."""

    def __init__(self, known, tick_for=lambda venue, instrument: 1):
        super().__init__()
        self.known = frozenset(known)
        self._tick_for = tick_for

    def __missing__(self, key: tuple[int, int]) -> L2Book:
        if key not in self.known:
            raise DatagramError("unknown instrument")
        book = self[key] = L2Book(self._tick_for(*key))
        return book
