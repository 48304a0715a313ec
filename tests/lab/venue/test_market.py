"""Market-data sources of the venue: synthetic market, engine log replay, capture replay."""
import numpy as np
import pytest

from engine.book import L2Book
from engine.logger import END, HEADER, QUEUE, FORMAT, LogWriter
from engine.messages import MARKET_UPDATE
from engine.protocol.md import ASK, BID, SET, decode_md
from engine.queues import fingerprint
from lab.analysis.measure import Endpoint
from lab.errors import LabError
from lab.synth import SynthConfig, synthesize, write_capture
from lab.run.feeds import feed_from_pcap, feed_source
from lab.venue.market import FeedError, feed_from_log, synthetic_feed

TICK = 1_000_000


def apply(book, datagram):
    for u in datagram.updates:
        book.set_level(u.side, u.price, u.qty if u.action == SET else 0)


def test_same_seed_same_bytes_other_seed_other_bytes():
    assert synthetic_feed(300, 5).payloads == synthetic_feed(300, 5).payloads
    assert synthetic_feed(300, 5).payloads != synthetic_feed(300, 6).payloads


def test_every_datagram_decodes_and_its_tops_are_the_book_a_reader_builds():
    feed = synthetic_feed(3000, 1, venues=(1, 2))
    books = {1: L2Book(TICK), 2: L2Book(TICK)}
    for payload, venue, seq, instrument in zip(feed.payloads, feed.venue, feed.seq, feed.instrument):
        d = decode_md(payload)
        assert (d.venue, d.seq, d.instrument) == (venue, seq, instrument) == (venue, seq, 7)
        bid, ask = d.updates[0], d.updates[1]
        assert (bid.side, ask.side, bid.action, ask.action) == (BID, ASK, SET, SET)
        assert 0 < bid.price < ask.price and bid.qty > 0 and ask.qty > 0
        apply(books[d.venue], d)
        assert books[d.venue].top() == (bid.price, bid.qty, ask.price, ask.qty)
    assert [b.crossed_fixes for b in books.values()] == [0, 0]


def test_seq_is_contiguous_per_venue_and_venues_take_turns():
    feed = synthetic_feed(301, 2, venues=(3, 1, 9))
    assert feed.venue.tolist() == [3, 1, 9] * 100 + [3]
    for venue, n in ((3, 101), (1, 100), (9, 100)):
        assert feed.seq[feed.venue == venue].tolist() == list(range(1, n + 1))
    assert feed.seq.dtype == np.uint64 and feed.venue.dtype == np.uint16 and feed.instrument.dtype == np.uint32


def test_trades_take_quantity_from_the_touch_they_hit():
    feed = synthetic_feed(2000, 3)
    previous, trades = None, 0
    for payload in feed.payloads:
        d = decode_md(payload)
        for trade in d.trades:
            trades += 1
            hit = d.updates[1] if trade.aggressor == BID else d.updates[0]
            before = previous.updates[1] if trade.aggressor == BID else previous.updates[0]
            assert trade.price == hit.price == before.price
            assert hit.qty == before.qty - trade.qty and hit.qty > 0
        previous = d
    assert 100 < trades < 600


def test_the_engine_models_trigger_on_some_datagrams_not_all():
    tops = np.array([[u.qty for u in decode_md(p).updates[:2]] + [decode_md(p).updates[1].price
                                                                  - decode_md(p).updates[0].price]
                     for p in synthetic_feed(4000, 4).payloads])
    bid_qty, ask_qty, spread = tops.T
    lopsided = (100 * bid_qty >= 70 * (bid_qty + ask_qty)) | (100 * bid_qty <= 30 * (bid_qty + ask_qty))
    assert 0.1 < lopsided.mean() < 0.5                     # imbalance-taker, threshold 70 %
    assert 0.2 < (spread <= TICK).mean() < 0.9             # join-the-touch, max_spread one tick


@pytest.mark.parametrize("payload_bytes, size", [(472, 464), (464, 464), (146, 128), (104, 104), (80, 80),
                                                 (46, 80), (1000, 992)])
def test_padding_gives_the_largest_exact_size(payload_bytes, size):
    feed = synthetic_feed(500, 7, payload_bytes=payload_bytes)
    assert {len(p) for p in feed.payloads} == {size}
    book, bids = L2Book(TICK), set()
    for payload in feed.payloads:
        d = decode_md(payload)
        apply(book, d)
        assert book.top() == (d.updates[0].price, d.updates[0].qty, d.updates[1].price, d.updates[1].qty)
        bids.add(d.updates[0].price)
    assert len(bids) > 3 or size == 80          # with room for a delete the market still moves


def test_a_payload_larger_than_udp_allows_is_a_feed_error():
    with pytest.raises(FeedError, match="payload_bytes 70000"):
        synthetic_feed(10, 1, payload_bytes=70_000)


def write_md_log(path, rows):
    """A log with only an md queue, the way engine.logger writes one."""
    layout = MARKET_UPDATE
    writer = LogWriter(str(path))
    writer.json(HEADER, {"format": FORMAT, "engine": "test"})
    writer.json(QUEUE, {"name": "test.md", "role": "md", "layout": layout.name, "descr": layout.dtype.descr,
                        "fingerprint": fingerprint(layout.dtype), "payload_size": layout.size,
                        "capacity": 1024, "start_seq": 0}, 0)
    messages = np.zeros(len(rows), layout.dtype)
    for name in rows[0]:
        messages[name] = [row[name] for row in rows]
    writer.messages(0, 0, messages.view(np.uint8).reshape(len(rows), -1))
    writer.json(END, {"complete": True})
    writer.close()


def test_log_replay_rebuilds_each_market_update(tmp_path):
    rows, book = [], L2Book(TICK)
    for payload in synthetic_feed(400, 8).payloads:      # what an engine's MD handler would log
        d = decode_md(payload)
        apply(book, d)
        bid_px, bid_qty, ask_px, ask_qty = book.top()
        trade = d.trades[-1] if d.trades else None
        rows.append({"md_seq": d.seq + 1000, "venue": 2, "instrument": 9, "send_ts_ns": 17 * d.seq,
                     "bid_price": bid_px, "bid_qty": bid_qty, "ask_price": ask_px, "ask_qty": ask_qty,
                     "trade_price": trade.price if trade else 0, "trade_qty": trade.qty if trade else 0})
    write_md_log(tmp_path / "md.log", rows)
    feed = feed_from_log(tmp_path / "md.log")
    assert feed.seq.tolist() == [r["md_seq"] for r in rows]
    assert set(feed.venue.tolist()) == {2} and set(feed.instrument.tolist()) == {9}
    replayed = L2Book(TICK)
    for payload, row in zip(feed.payloads, rows):
        d = decode_md(payload)
        assert (d.seq, d.send_ts_ns) == (row["md_seq"], row["send_ts_ns"])
        assert [(u.price, u.qty) for u in d.updates[:2]] == [(row["bid_price"], row["bid_qty"]),
                                                            (row["ask_price"], row["ask_qty"])]
        assert [(t.price, t.qty) for t in d.trades] == ([(row["trade_price"], row["trade_qty"])]
                                                        if row["trade_qty"] else [])
        apply(replayed, d)                                # a book fed the replay has the logged top
        assert replayed.top() == (row["bid_price"], row["bid_qty"], row["ask_price"], row["ask_qty"])


def test_a_bad_log_is_a_feed_error(tmp_path):
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"not a log at all")
    with pytest.raises(FeedError, match="not a wirelab log") as caught:
        feed_from_log(bad)
    assert isinstance(caught.value, LabError) and "\n" not in str(caught.value)
    with pytest.raises(FeedError, match="cannot read"):
        feed_from_log(tmp_path / "missing.log")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    synthesis = synthesize(SynthConfig(triggers=40, seed=11))
    path = tmp_path_factory.mktemp("pcap") / "synth.pcapng"
    write_capture(synthesis, str(path), "pcapng", "hardware")
    return path, synthesis.md_columns


def test_capture_replay_gives_the_captured_md_datagrams_in_order(capture):
    path, columns = capture
    feed = feed_from_pcap(path)
    assert feed.seq.tolist() == columns["seq"].tolist()
    assert feed.instrument.tolist() == columns["instrument"].tolist()
    assert feed.venue.tolist() == columns["venue"].tolist() and feed.skipped == 0
    assert [decode_md(p).updates[0].price for p in feed.payloads] == columns["bid"].tolist()
    assert [len(p) for p in feed.payloads] == columns["length"].tolist()


def test_capture_replay_errors(capture, tmp_path):
    path, _columns = capture
    with pytest.raises(FeedError, match="no MD datagrams"):
        feed_from_pcap(path, md_flow=Endpoint(0x7F000001, 1))
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(FeedError, match="not a pcap"):
        feed_from_pcap(junk)


def test_feed_source_by_spec(capture):
    path, columns = capture
    assert feed_source("synthetic", 20, 1, (1,), None).payloads == synthetic_feed(20, 1).payloads
    assert feed_source("", 20, 1, (1,), 248).payloads == synthetic_feed(20, 1, payload_bytes=248).payloads
    assert feed_source(f"pcap:{path}", 0, 0, (1,), None).seq.tolist() == columns["seq"].tolist()
    for spec in ("random", "log:", "pcap", "synthetic:x"):
        with pytest.raises(FeedError, match="feed source"):
            feed_source(spec, 20, 1, (1,), None)
