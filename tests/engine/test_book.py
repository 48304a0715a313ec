"""The array-backed L2 book against a naive dict reference on long random update streams."""
import numpy as np
import pytest

from engine.book import ASK, BID, BookError, Books, DatagramError, L2Book, decode_datagram
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


def _datagram(seq, updates, trades=(), venue=1, instrument=7):
    """An MD datagram of (side, action, price, qty) updates; the first two must be a bid then an ask."""
    return md.MdDatagram(venue, seq, instrument, 10**18 + seq, tuple(md.L2Update(*u) for u in updates),
                         tuple(md.Trade(*t) for t in trades)).encode()


@pytest.mark.parametrize("seed", [4, 5])
def test_decode_matches_set_level_per_entry_and_counts_the_feed_gaps(seed):
    rng = np.random.default_rng(seed)
    tick = 500_000
    books, per_entry, ref = Books({(1, 7)}, lambda venue, instrument: tick), L2Book(tick), DictBook()
    mid = 100_000 * tick
    seq, expected_gaps = 0, 0
    for n in range(3_000):
        skip = int(rng.integers(1, 4)) if rng.random() < 0.05 else 0      # datagrams lost on the feed
        seq += 1 + skip
        expected_gaps += skip if n else 0
        mid += int(rng.integers(-3, 4)) * tick * (40 if rng.random() < 0.01 else 1)
        updates = []
        for k in range(int(rng.integers(2, 8))):
            side = (BID, ASK)[k] if k < 2 else int(rng.integers(BID, ASK + 1))
            offset = int(rng.geometric(0.3)) * (-1 if rng.random() < 0.03 else 1)      # some crossing
            price = mid - offset * tick if side == BID else mid + offset * tick
            action = md.DELETE if rng.random() < 0.3 else md.SET
            updates.append((side, action, price, int(rng.integers(1, 1000))))
        trades = [(mid, int(rng.integers(1, 50)), 1) for _ in range(int(rng.integers(0, 3)))]
        fields = decode_datagram(_datagram(seq, updates, trades), books, 5_000 + n, 9_000 + n)
        for side, action, price, qty in updates:
            per_entry.set_level(side, price, qty if action == md.SET else 0)
            ref.set_level(side, price, qty if action == md.SET else 0)
        book = books[1, 7]
        app_in, published, kernel_rx, got_seq, send_ts, venue, instrument, *top, trade_px, trade_qty = fields
        assert (app_in, kernel_rx, got_seq, send_ts, venue, instrument) == (9_000 + n, 5_000 + n, seq,
                                                                            10**18 + seq, 1, 7)
        assert published > 0 and (trade_px, trade_qty) == (trades[-1][:2] if trades else (0, 0))
        assert tuple(top) == per_entry.top() == book.top(), seq
        assert book.best_bid() == ref.best(BID) and book.best_ask() == ref.best(ASK), seq
        assert book.depth(BID, 10) == ref.depth(BID, 10) and book.depth(ASK, 10) == ref.depth(ASK, 10), seq
    assert book.crossed_fixes == per_entry.crossed_fixes == ref.crossed_fixes > 0
    assert (book.datagrams, book.last_seq, book.gaps) == (3_000, seq, expected_gaps) and expected_gaps > 0


def test_decode_drops_what_it_cannot_use_with_its_reason():
    books = Books({(1, 7)}, lambda venue, instrument: 100)
    gram = _datagram(1, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7)])
    wrong_count = bytearray(gram)
    wrong_count[md.HEADER.offset("n_updates")] = 3     # the header claims an entry that is not there
    cases = [(b"", "short datagram"), (gram[:31], "short datagram"), (b"XM" + gram[2:], "unknown magic"),
             (gram[:2] + b"\x02" + gram[3:], "unknown version or type"),
             (gram[:3] + b"\x09" + gram[4:], "unknown version or type"),
             (gram[:-1], "length mismatch"), (gram + bytes(24), "length mismatch"),
             (bytes(wrong_count), "length mismatch")]
    for payload, reason in cases:
        with pytest.raises(DatagramError) as caught:
            decode_datagram(payload, books, 0, 0)
        assert caught.value.args == (reason,), payload
    assert not books                                   # no book was made for what was not used
    assert decode_datagram(gram, books, 0, 0)[7:11] == (1000, 5, 1100, 7)
    with pytest.raises(TypeError):
        decode_datagram(gram, {(1, 7): "not a book"}, 0, 0)
    with pytest.raises(TypeError):
        decode_datagram(gram, books, 0)


def test_a_bad_update_drops_the_datagram_and_keeps_earlier_entries():
    books = Books({(1, 7)}, lambda venue, instrument: 100)
    gram = bytearray(_datagram(1, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7), (BID, md.SET, 900, 2)]))
    gram[md.HEADER_SIZE + 2 * md.UPDATE_SIZE] = 3      # the third entry's side
    with pytest.raises(DatagramError, match="bad book update"):
        decode_datagram(bytes(gram), books, 0, 0)
    assert books[1, 7].top() == (1000, 5, 1100, 7) and books[1, 7].datagrams == 0


def test_an_instrument_the_config_does_not_name_is_dropped_and_makes_no_book():
    """Random venue and instrument ids must not grow the engine (issue 16, found 2)."""
    from collections import Counter

    from engine.md_handler import MarketDataHandler
    rng = np.random.default_rng(9)
    handler = MarketDataHandler([], Books({(1, 7)}, lambda venue, instrument: 100), updates=None)
    ids = [(int(v), int(i)) for v, i in zip(rng.integers(0, 1 << 16, 5_000), rng.integers(0, 1 << 32, 5_000))]
    unknown = sum((v, i) != (1, 7) for v, i in ids)
    for seq, (venue, instrument) in enumerate(ids, 1):
        handler.decode(_datagram(seq, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7)], venue=venue,
                                 instrument=instrument), 0, 0)
    assert handler.dropped == Counter({"unknown instrument": unknown}) and unknown > 4_990
    assert set(handler.books) <= {(1, 7)}
    assert handler.decode(_datagram(1, [(BID, md.SET, 1000, 5), (ASK, md.SET, 1100, 7)]), 0, 0)[7:11] == \
        (1000, 5, 1100, 7)


@pytest.mark.parametrize("seqs, gaps, duplicates, regressions", [
    ([1, 2, 3, 2**64 - 1, 5, 2**64 - 1, 2**64 - 1], 2**64 - 1 - 3 - 1, 2, 1),   # a jump to the top
    ([10, 11, 3, 4, 12, 12, 14], 1, 1, 2),                                       # backwards, then on
    ([2**64 - 1, 0, 1], 0, 0, 2),                                                # the top first
    ([5, 5, 5, 6, 9], 2, 2, 0),
])
def test_the_feed_sequence_counts_gaps_duplicates_and_regressions_without_wrapping(seqs, gaps, duplicates,
                                                                                   regressions):
    """md_gaps once read 18444826053554261430 after a seq jumped to 2**64-1 (issue 16, found 3).
    The expectations are counted by hand: a gap is a seq above the highest so far + 1."""
    books = Books({(1, 7)}, lambda venue, instrument: 100)
    for seq in seqs:
        gram = md.MdDatagram(1, seq, 7, 0, (md.L2Update(BID, md.SET, 1000, 5), md.L2Update(ASK, md.SET, 1100, 7)))
        decode_datagram(gram.encode(), books, 0, 0)
    book = books[1, 7]
    assert (book.gaps, book.duplicates, book.regressions) == (gaps, duplicates, regressions)
    assert book.datagrams == len(seqs) and book.last_seq == max(seqs)
