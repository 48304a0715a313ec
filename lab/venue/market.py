"""Where the venue's market-data datagrams come from: a synthetic market or an engine log.
A capture's datagrams, and picking a source by name, live in lab.run.feeds.

Every source returns a Feed: the datagrams (engine.protocol.md payloads, decodable by
decode_md) in publishing order, with their seq, venue and instrument as arrays.

The synthetic market, per venue, is an L2 book on the tick grid that keeps LEVELS levels
per side filled. Each step the best bid and best ask move by at most one tick each, the
spread stays within 1..MAX_SPREAD_TICKS ticks, and neither side moves onto the other
side's old touch (a book applying the new bid first would otherwise see itself crossed).
The touch quantities are often redrawn, sometimes lopsided, so that the engine's
imbalance-taker fires on roughly a quarter of the datagrams and join-the-touch re-prices
on about a sixth (tests/lab/venue/test_market.py checks the range). Sometimes a trade hits
the touch: that side's price stays and its quantity drops by the traded amount. A datagram:

    best bid SET, best ask SET,
    DELETE of a touch that retreated (at most one per side),
    SETs of deeper levels that appear or change, DELETEs of levels left behind the ladder,
    then the trade, if any.

So an L2 book that applies the datagrams in order holds exactly the synthetic book, and
its top is the datagram's first two entries.

Padding (`payload_bytes`): decode_md requires length == 32 + 24 * (n_updates + n_trades)
exactly (no slack after the entries), so the only sizes are 32 + 24k. A padded feed has
the largest such size <= payload_bytes (472 -> 464, 18 entries; 146 -> 128), filled with
SETs that repeat what the book holds. The smallest datagram is 80 bytes (the best bid and
ask), used for any payload_bytes below it (46 -> 80). A small size limits the market:
a trade, a retreating touch or a deeper change happens only when there is room for its
entry; at 80 bytes the prices never move.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from engine.logger import LogError, read_log
from engine.protocol.md import (ASK, BID, DELETE, HEADER_SIZE, SET, UPDATE_SIZE, L2Update,
                                MdDatagram, Trade, md_length)
from lab.errors import LabError

LEVELS = 5                       # the ladder: price levels per side the market keeps filled
MAX_SPREAD_TICKS = 3
BASE_TICKS = 10_000              # the first best bid, in ticks (100.00 at the default tick of 0.01)
MOVE_CHANCE = 0.25               # chance per step that each side's best price moves by one tick
TOUCH_REDRAW = 0.5               # chance per step that each touch quantity is drawn afresh
TOUCH_LOW = 15                   # a fresh touch quantity is 15 to 39 lots, times LOPSIDED sometimes
LOPSIDED, LOPSIDED_CHANCE = 4, 0.1
DEEPER_CHANGE = 0.15             # chance per step that a deeper level's quantity changes
TRADE_CHANCE = 0.15
LOT = 100
SMALLEST = md_length(2, 0)       # best bid and ask only: 80 bytes
MAX_UDP_PAYLOAD = 65_507         # 65535 - 20 (IPv4) - 8 (UDP)


class FeedError(LabError):
    """A market-data source that cannot be used (bad spec, unreadable log or capture, no MD)."""


@dataclass
class Feed:
    payloads: list[bytes]        # MD datagrams, in publishing order
    seq: np.ndarray              # uint64, per venue, +1 per datagram
    venue: np.ndarray            # uint16
    instrument: np.ndarray       # uint32
    source: str                  # e.g. "synthetic seed=1", "log:PATH", "pcap:PATH"
    skipped: int = 0             # captured datagrams with a valid MD header whose entries do not decode

    def __len__(self) -> int:
        return len(self.payloads)


def padded_size(payload_bytes: int) -> int:
    """The datagram size used for `payload_bytes`: the largest 32 + 24k <= it, at least 80 (see the module doc)."""
    if payload_bytes > MAX_UDP_PAYLOAD:
        raise FeedError(f"payload_bytes {payload_bytes}: a UDP datagram holds at most {MAX_UDP_PAYLOAD}")
    return max(SMALLEST, md_length((payload_bytes - HEADER_SIZE) // UPDATE_SIZE, 0))


# -- synthetic -------------------------------------------------------------------------------

class _Book:
    """One venue's synthetic book, exactly as its datagrams so far told it: price -> qty per side.
    Prices are in ticks; `best` is each side's touch."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.best = {BID: BASE_TICKS, ASK: BASE_TICKS + 1}
        self.levels = {side: {price: self._touch_qty()} for side, price in self.best.items()}

    def _qty(self) -> int:
        return int(self.rng.integers(1, 40)) * LOT

    def _touch_qty(self) -> int:
        lopsided = self.rng.random() < LOPSIDED_CHANCE
        return int(self.rng.integers(TOUCH_LOW, 40)) * LOT * (LOPSIDED if lopsided else 1)

    def _ladder(self, side: int) -> list[int]:
        """The ladder's deeper prices, nearest first."""
        sign = -1 if side == BID else 1
        return [self.best[side] + sign * k for k in range(1, LEVELS)]

    def step(self, room: int | None) -> tuple[list[tuple[int, int, int, int]], tuple[int, int, int] | None]:
        """Move the market one step. Returns the updates after the two tops, (side, action, price,
        qty), and the trade (price, qty, aggressor) or None; together at most `room` entries."""
        rng = self.rng
        room = math.inf if room is None else room
        trade = hit = None
        if room >= 1 and rng.random() < TRADE_CHANCE:
            aggressor = int(rng.integers(BID, ASK + 1))
            hit = ASK if aggressor == BID else BID             # a buyer takes the ask, a seller the bid
            touch_qty = self.levels[hit][self.best[hit]]
            if touch_qty > LOT:
                trade = (self.best[hit], int(rng.integers(1, touch_qty // LOT)) * LOT, aggressor)
                room -= 1
            else:
                hit = None
        bid, ask = self.best[BID], self.best[ASK]
        while True:
            move = {side: 0 if side == hit or rng.random() >= MOVE_CHANCE else int(rng.choice((-1, 1)))
                    for side in (BID, ASK)}
            retreat = {BID: move[BID] < 0, ASK: move[ASK] > 0}     # the old touch must be deleted
            new_bid, new_ask = bid + move[BID], ask + move[ASK]
            # Never onto the other side's old touch: a book applying the bid first would see it crossed.
            if (1 <= new_ask - new_bid <= MAX_SPREAD_TICKS and new_bid < ask and new_ask > bid
                    and sum(retreat.values()) <= room):
                break
        updates = []
        for side in (BID, ASK):
            if retreat[side]:
                del self.levels[side][self.best[side]]
                updates.append((side, DELETE, self.best[side], 0))
            self.best[side] += move[side]
            if side != hit and (self.best[side] not in self.levels[side] or rng.random() < TOUCH_REDRAW):
                self.levels[side][self.best[side]] = self._touch_qty()
        if trade is not None:
            self.levels[hit][self.best[hit]] -= trade[1]
        room -= len(updates)
        for side in (BID, ASK):                                # deeper levels appear or change, room allowing
            book = self.levels[side]
            for price in self._ladder(side):
                if room >= 1 and (price not in book or rng.random() < DEEPER_CHANGE):
                    book[price] = self._qty()
                    updates.append((side, SET, price, book[price]))
                    room -= 1
            for price in sorted(p for p in book if abs(p - self.best[side]) >= LEVELS):
                if room >= 1:                                  # levels left behind the ladder go
                    del book[price]
                    updates.append((side, DELETE, price, 0))
                    room -= 1
        return updates, trade

    def unchanged(self) -> list[tuple[int, int, int, int]]:
        """SETs that repeat what the book holds (padding): the ladder's levels, touches included."""
        return [(side, SET, price, self.levels[side][price]) for side in (BID, ASK)
                for price in [self.best[side]] + self._ladder(side) if price in self.levels[side]]


def synthetic_feed(count: int, seed: int, venues=(1,), instrument: int = 7, tick: int = 1_000_000,
                   payload_bytes: int | None = None) -> Feed:
    """A synthetic L2 market (see the module doc), deterministic by seed; venues take turns."""
    if count < 1:
        raise FeedError(f"count {count}: need at least one datagram")
    if not venues:
        raise FeedError("need at least one venue")
    if tick <= 0:
        raise FeedError(f"tick {tick} must be positive")
    entries = None if payload_bytes is None else (padded_size(payload_bytes) - HEADER_SIZE) // UPDATE_SIZE
    venues = tuple(venues)
    rng = np.random.default_rng(seed)
    books = {venue: _Book(rng) for venue in venues}
    next_seq = dict.fromkeys(venues, 1)
    venue_of = np.array([venues[i % len(venues)] for i in range(count)], np.uint16)
    seq = np.zeros(count, np.uint64)
    payloads = []
    for i, venue in enumerate(venue_of.tolist()):
        seq[i] = next_seq[venue]
        next_seq[venue] += 1
        payloads.append(_datagram(books[venue], venue, int(seq[i]), instrument, tick, entries))
    return Feed(payloads, seq, venue_of, np.full(count, instrument, np.uint32), f"synthetic seed={seed}")


def _datagram(book: _Book, venue: int, seq: int, instrument: int, tick: int, entries: int | None) -> bytes:
    """The next step of `book` as one datagram, of exactly `entries` entries if given."""
    updates, trade = book.step(None if entries is None else entries - 2)
    tops = [(side, SET, book.best[side], book.levels[side][book.best[side]]) for side in (BID, ASK)]
    updates = tops + updates
    if entries is not None:                            # pad with SETs that change nothing
        same = book.unchanged()
        updates += [same[i % len(same)] for i in range(entries - len(updates) - (trade is not None))]
    trades = () if trade is None else (Trade(trade[0] * tick, trade[1], trade[2]),)
    return MdDatagram(venue, seq, instrument, 0, tuple(L2Update(side, action, price * tick, qty)
                                                       for side, action, price, qty in updates), trades).encode()


# -- engine log ------------------------------------------------------------------------------

def feed_from_log(path) -> Feed:
    """One datagram per logged MarketUpdate, same seq: best bid, best ask, the trade if any.

    Between the two tops and the trade, DELETEs of earlier tops that the new top has passed
    (a bid above the new bid, an ask below the new ask), so that a book fed only these
    datagrams has exactly the logged top of book.
    """
    path = os.fspath(path)
    try:
        log = read_log(path)
    except LogError as exc:
        raise FeedError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise FeedError(f"{path}: cannot read: {exc.strerror or exc}") from None
    queue = log.queues.get("md")
    if queue is None or not len(queue.messages):
        raise FeedError(f"{path}: the log holds no market updates")
    shown: dict[tuple[int, int, int], set[int]] = {}       # (venue, instrument, side) -> prices set so far
    payloads = []
    for m in queue.messages:
        venue, instrument = int(m["venue"]), int(m["instrument"])
        tops = ((BID, int(m["bid_price"]), int(m["bid_qty"])), (ASK, int(m["ask_price"]), int(m["ask_qty"])))
        updates = [L2Update(side, SET, price, qty) for side, price, qty in tops]
        for side, price, qty in tops:
            prices = shown.setdefault((venue, instrument, side), set())
            passed = sorted(p for p in prices if (p > price if side == BID else p < price) or not qty)
            updates += [L2Update(side, DELETE, p, 0) for p in passed if p != price]
            prices.difference_update(passed)
            if qty:
                prices.add(price)
        trades = (Trade(int(m["trade_price"]), int(m["trade_qty"])),) if m["trade_qty"] else ()
        payloads.append(MdDatagram(venue, int(m["md_seq"]), instrument, int(m["send_ts_ns"]), tuple(updates),
                                   trades).encode())
    messages = queue.messages
    return Feed(payloads, messages["md_seq"].astype(np.uint64), messages["venue"].astype(np.uint16),
                messages["instrument"].astype(np.uint32), f"log:{path}")
