"""Property tests (issue 16) of the engine's L2 book (engine.book, engine/_book.c): any sequence of
updates matches a plain-Python dict book, top of book after every update; an update the book
cannot apply raises BookError and leaves it as it was; any bytes as a market-data datagram are
applied or dropped with a counted reason, never raised.
"""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.book import ASK, BID, BookError, Books, DatagramError, ItchOrders, L2Book, decode_datagram, decode_itch
from engine.md_handler import MarketDataHandler
from engine.protocol import itch50, md
from wire_mutations import any_bytes, examples

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
TICKS = (1, 100, 500_000)
BAND = 3_000                     # ticks either side of the centre: a market's ordinary day
NEVER_REFUSED_SPAN = 2**17       # a book whose levels span fewer ticks than this takes any price on its grid
MAX_LADDER_LEVELS = 1 << 20      # the most levels a ladder grows to (engine/book.py): its memory bound
VENUE, INSTRUMENT = 1, 7


class DictBook:
    """The obvious L2 book: a dict of price -> qty per side; the crossed-book guard as documented
    (a new best that reaches the other side clears the levels it crosses)."""

    def __init__(self, tick: int):
        self.tick = tick
        self.sides = {BID: {}, ASK: {}}
        self.crossed_fixes = 0

    def valid(self, side, price, qty) -> bool:
        return side in (BID, ASK) and qty >= 0 and price % self.tick == 0 and INT64_MIN <= price <= INT64_MAX

    def set_level(self, side, price, qty) -> None:
        levels, other = self.sides[side], self.sides[BID + ASK - side]
        if qty == 0:
            levels.pop(price, None)
            return
        new_best = not levels or (price > max(levels) if side == BID else price < min(levels))
        levels[price] = qty
        if new_best:
            crossed = [p for p in other if (p <= price if side == BID else p >= price)]
            for p in crossed:
                del other[p]
            self.crossed_fixes += bool(crossed)

    def best(self, side):
        levels = self.sides[side]
        if not levels:
            return None
        price = max(levels) if side == BID else min(levels)
        return price, levels[price]

    def top(self) -> tuple[int, int, int, int]:
        (bid, bid_qty), (ask, ask_qty) = self.best(BID) or (0, 0), self.best(ASK) or (0, 0)
        return bid, bid_qty, ask, ask_qty

    def depth(self, side, n):
        levels = self.sides[side]
        return [(p, levels[p]) for p in sorted(levels, reverse=side == BID)[:n]]

    def may_refuse(self, price: int) -> bool:
        """Whether a book may refuse this price as too far: its levels and the price span many ticks,
        or they lie near the ends of int64 (a window around them would not fit)."""
        prices = [price, *self.sides[BID], *self.sides[ASK]]
        edge = 2**40 * self.tick
        return ((max(prices) - min(prices)) // self.tick >= NEVER_REFUSED_SPAN
                or min(prices) < INT64_MIN + edge or max(prices) > INT64_MAX - edge)


def state(book: L2Book):
    return book.top(), book.depth(BID, 10**6), book.depth(ASK, 10**6), book.crossed_fixes


@st.composite
def updates(draw, tick: int, centre: int):
    """(side, price, qty): mostly near the centre on the grid, some deletes, some crossing the other
    side; a few far away (anywhere in int64), off the grid, with a bad side or a negative qty."""
    kind = draw(st.sampled_from(("near",) * 12 + ("far", "off grid", "bad side", "negative")))
    side = draw(st.sampled_from((BID, ASK)))
    price = centre + tick * draw(st.integers(-BAND, BAND))
    qty = draw(st.sampled_from((0, 0, 1, 7, 10**6, 2**63 - 1)))
    if kind == "far":
        far = draw(st.integers(INT64_MIN, INT64_MAX))
        price = min(max(far - far % tick, INT64_MIN), INT64_MAX)
        qty = draw(st.integers(0, 10))
    elif kind == "off grid" and tick > 1:
        price += draw(st.integers(1, tick - 1))
    elif kind == "bad side":
        side = draw(st.sampled_from((0, 3, 255, -1)))
    elif kind == "negative":
        qty = draw(st.integers(-2**63, -1))
    return side, price, qty


def check_updates(book: L2Book, reference: DictBook, changes) -> None:
    """Each update applied to both books, or refused by the L2Book with a reason the reference
    knows: the tops agree after every update and the ladder stays within its memory bound."""
    for side, price, qty in changes:
        before = state(book)
        try:
            book.set_level(side, price, qty)
        except BookError as error:
            assert "\n" not in str(error)
            assert not reference.valid(side, price, qty) or (qty and reference.may_refuse(price)), error
            assert state(book) == before                       # refused whole
            continue
        assert reference.valid(side, price, qty)
        reference.set_level(side, price, qty)
        assert book.top() == reference.top()
        assert (book.best_bid(), book.best_ask()) == (reference.best(BID), reference.best(ASK))
        assert book.depth(BID, 3) == reference.depth(BID, 3) and book.depth(ASK, 3) == reference.depth(ASK, 3)
        assert book.crossed_fixes == reference.crossed_fixes and not book.is_crossed()
        assert book.window <= MAX_LADDER_LEVELS
    assert book.depth(BID, 10**6) == reference.depth(BID, 10**6)
    assert book.depth(ASK, 10**6) == reference.depth(ASK, 10**6)


@settings(max_examples=examples(60))
@given(data=st.data())
def test_any_updates_match_a_dict_book_after_every_update(data):
    tick = data.draw(st.sampled_from(TICKS), label="tick")
    centre = tick * data.draw(st.integers(-10**9, 10**9), label="centre")
    book = L2Book(tick, window=data.draw(st.sampled_from((16, 64, 1 << 14)), label="window"))   # small: re-centres
    check_updates(book, DictBook(tick), data.draw(st.lists(updates(tick, centre), max_size=60), label="updates"))


@pytest.mark.parametrize("tick, window, changes", [
    # found by the property above (issue 16): deleting a level far from the book, which holds none
    # there, re-centred the ladder into 2**31 levels a side: MemoryError
    (1, 16, [(BID, 2**30, 1), (BID, 0, 0)]),
    # one far price on the grid grew the ladder to 2**30 levels (8 GiB of address space a side, a
    # second of scanning each time the best level emptied)
    (100, 1 << 14, [(BID, 10**6, 5), (ASK, 10**6 + 100 * 2**28, 1), (ASK, 10**6 + 100 * 2**28, 0)]),
])
def test_a_price_far_from_the_book_costs_no_memory(tick, window, changes):
    check_updates(L2Book(tick, window=window), DictBook(tick), changes)


# -- datagrams ------------------------------------------------------------------------------------

def send_ts_of(seq: int) -> int:
    return 10**18 + seq % 10**18


def datagram(seq: int, entries, trades=()) -> bytes:
    """A WM datagram (engine.protocol.md encodes it) of (side, action, price, qty) entries."""
    return md.MdDatagram(VENUE, seq, INSTRUMENT, send_ts_of(seq), tuple(md.L2Update(*e) for e in entries),
                         tuple(md.Trade(*t) for t in trades)).encode()


@st.composite
def feeds(draw, tick: int, centre: int):
    """Datagrams in feed order (seqs that skip, repeat and go back), each (seq, entries, the index of
    a bad entry or None, trades): the first two entries a bid and an ask, as the format requires."""
    seq, out = draw(st.integers(0, 2**64 - 10**4)), []
    for _ in range(draw(st.integers(1, 12))):
        seq = min(max(seq + draw(st.sampled_from((1, 1, 1, 2, 5, 0, -1, -3))), 0), 2**64 - 1)
        sides = [BID, ASK] + draw(st.lists(st.sampled_from((BID, ASK)), max_size=4))
        entries = [[side, draw(st.sampled_from((md.SET, md.SET, md.DELETE))),
                    centre + tick * draw(st.integers(-60, 60)), draw(st.integers(1, 10**6))] for side in sides]
        bad = None
        if draw(st.integers(0, 5)) == 0:                         # one entry the book cannot apply
            bad = draw(st.integers(0, len(entries) - 1))
            how = draw(st.sampled_from(("negative", "off grid" if tick > 1 else "negative")))
            if how == "negative":
                entries[bad][1:] = [md.SET, entries[bad][2], -draw(st.integers(1, 10**6))]
            else:
                entries[bad][2] += draw(st.integers(1, tick - 1))
        trades = draw(st.lists(st.tuples(st.just(centre), st.integers(1, 50), st.sampled_from((0, 1, 2))), max_size=2))
        out.append((seq, entries, bad, trades))
    return out


def encode_unchecked(seq: int, entries, trades) -> bytes:
    """As datagram(), but an entry may hold what the encoder refuses (a negative qty): written raw."""
    good = [(side, action, price, abs(qty)) for side, action, price, qty in entries]
    payload = bytearray(datagram(seq, good, trades))
    for k, (_, _, _, qty) in enumerate(entries):
        at = md.HEADER_SIZE + k * md.UPDATE_SIZE + md.UPDATE.offset("qty")
        payload[at:at + 8] = qty.to_bytes(8, "little", signed=True)
    return bytes(payload)


@settings(max_examples=examples(60))
@given(data=st.data())
def test_a_feed_of_datagrams_matches_a_dict_book_and_counts_its_sequence(data):
    """decode_datagram (the engine's MD handler) on a feed with gaps, repeats, regressions and bad
    entries: the top after every datagram is the dict book's; a bad entry drops its datagram (the
    entries before it stay applied, as documented) and the feed counts follow engine/_book.c's
    rule: a gap is a seq above the highest so far + 1."""
    tick = data.draw(st.sampled_from(TICKS), label="tick")
    centre = tick * data.draw(st.integers(10**3, 10**9), label="centre")
    books = Books({(VENUE, INSTRUMENT)}, lambda venue, instrument: tick)
    reference = DictBook(tick)
    counts = Counter()
    highest = None
    for seq, entries, bad, trades in data.draw(feeds(tick, centre), label="feed"):
        try:
            fields = decode_datagram(encode_unchecked(seq, entries, trades), books, 5, 9)
        except DatagramError as error:
            assert bad is not None and error.args == ("bad book update",)
            for side, action, price, qty in entries[:bad]:
                reference.set_level(side, price, qty if action == md.SET else 0)
            assert books[VENUE, INSTRUMENT].top() == reference.top()
            continue
        assert bad is None
        for side, action, price, qty in entries:
            reference.set_level(side, price, qty if action == md.SET else 0)
        if highest is None or seq > highest:
            counts["gaps"] += seq - highest - 1 if highest is not None else 0
            highest = seq
        else:
            counts["duplicates" if seq == highest else "regressions"] += 1
        counts["datagrams"] += 1
        app_in, _, kernel_rx, got_seq, send_ts, venue, instrument, *top, trade_price, trade_qty = fields
        assert (app_in, kernel_rx, got_seq, send_ts, venue, instrument) == (9, 5, seq, send_ts_of(seq), VENUE, INSTRUMENT)
        assert tuple(top) == reference.top() == books[VENUE, INSTRUMENT].top()
        assert (trade_price, trade_qty) == (tuple(trades[-1][:2]) if trades else (0, 0))
    if counts["datagrams"]:
        book = books[VENUE, INSTRUMENT]
        assert (book.datagrams, book.gaps, book.duplicates, book.regressions, book.last_seq) == (
            counts["datagrams"], counts["gaps"], counts["duplicates"], counts["regressions"], highest)


@st.composite
def wm_datagrams(draw) -> bytes:
    """Datagrams with a valid header whose entries hold anything: any side, action, price and qty."""
    n_updates = draw(st.integers(0, 4))
    entries = [(draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                draw(st.one_of(st.integers(-500, 500).map(lambda k: 10**10 + 100 * k),
                               st.integers(INT64_MIN, INT64_MAX))),
                draw(st.integers(INT64_MIN, INT64_MAX))) for _ in range(n_updates)]
    payload = bytearray(md.HEADER_SIZE + md.UPDATE_SIZE * n_updates)
    payload[:4] = md.MAGIC + bytes([md.VERSION, md.MSG_TYPE_MD])
    md.HEADER.put(payload, "length", len(payload))
    md.HEADER.put(payload, "venue", draw(st.sampled_from((VENUE, 2))))
    md.HEADER.put(payload, "seq", draw(st.integers(0, 2**64 - 1)))
    md.HEADER.put(payload, "instrument", draw(st.sampled_from((INSTRUMENT, 8))))
    md.HEADER.put(payload, "n_updates", n_updates)
    for k, (side, action, price, qty) in enumerate(entries):
        at = md.HEADER_SIZE + k * md.UPDATE_SIZE
        for name, value in (("side", side), ("action", action), ("price", price), ("qty", qty)):
            md.UPDATE.put(payload, name, value, at)
    return bytes(payload)


@settings(max_examples=examples(80))
@given(st.lists(any_bytes(wm_datagrams()), max_size=8))
def test_any_bytes_as_wm_datagrams_are_applied_or_counted_as_dropped(payloads):
    handler = MarketDataHandler([], Books({(VENUE, INSTRUMENT)}, lambda venue, instrument: 100), updates=None)
    for n, payload in enumerate(payloads, 1):
        update = handler.decode(payload, 0, 0)
        assert update is not None or sum(handler.dropped.values()) > 0
        assert update is None or len(update) == 13
        book = handler.books.get((VENUE, INSTRUMENT))
        assert book is None or not book.is_crossed()
    assert sum(handler.dropped.values()) + handler.handled == len(payloads)
    assert all(isinstance(reason, str) and "\n" not in reason for reason in handler.dropped)
    assert set(handler.books) <= {(VENUE, INSTRUMENT)}           # no book for an instrument not named


@st.composite
def itch_packets(draw) -> bytes:
    """MoldUDP64 packets of the messages the L3 book reads, their fields anything: refs from a
    small set (so deletes find adds), any side byte, prices near each other or anywhere in u32."""
    def message() -> bytes:
        letter = draw(st.sampled_from(b"AFECXDUPSR"))
        layout = itch50.MESSAGES[letter]
        fields = {"message_type": bytes([letter]), "stock_locate": draw(st.sampled_from((1, 2, 9)))}
        for name in layout.dtype.names:
            if name in ("order_ref", "original_ref", "new_ref"):
                fields[name] = draw(st.integers(1, 6))
            elif name in ("price", "execution_price"):
                fields[name] = draw(st.one_of(st.integers(10_000, 10_050), st.integers(0, 2**32 - 1)))
            elif name in ("shares", "executed_shares", "cancelled_shares"):
                fields[name] = draw(st.sampled_from((0, 1, 100, 2**32 - 1)))
            elif name == "side":
                fields[name] = draw(st.sampled_from((b"B", b"S", b"X")))
        body = layout.pack(**fields)
        return body if draw(st.integers(0, 9)) else body[:draw(st.integers(0, len(body)))]
    messages = [message() for _ in range(draw(st.integers(0, 5)))]
    return itch50.encode_packet(b"WIRELAB001", draw(st.integers(0, 2**64 - 1)), messages)


@settings(max_examples=examples(60))
@given(st.lists(any_bytes(itch_packets()), max_size=8))
def test_any_bytes_as_itch_packets_are_applied_or_counted_as_dropped(payloads):
    books = Books({(VENUE, 1), (VENUE, 2)}, lambda venue, instrument: 100)
    orders = ItchOrders(4)
    for payload in payloads:
        try:
            updates = decode_itch(payload, books, orders, VENUE, 0, 0)
        except DatagramError as error:
            assert len(payload) < itch50.MOLD_HEADER.size and error.args == ("short datagram",)
            continue
        assert all(len(update) == 13 and update[6] in (1, 2) for update in updates)
        assert len(orders) <= orders.max_orders
        assert all(isinstance(reason, str) and count > 0 for reason, count in orders.dropped.items())
    assert set(books) <= {(VENUE, 1), (VENUE, 2)}
