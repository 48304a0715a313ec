"""The L3 book in C (decode_itch, ItchOrders) against a plain-Python reference on a generated ITCH day,
its bad-input counts, the `md` venue config, and the engine trading on an ITCH feed over loopback."""
import os
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.book import Books, DatagramError, ItchOrders, decode_itch
from engine.config import ConfigError, parse_config
from engine.md_handler import MarketDataHandler
from engine.messages import MARKET_UPDATE
from engine.net import udp_receiver
from engine.protocol import itch50
from engine.protocol.orders import BUY as ORDER_BUY
from itch_day import (LOCATES, SESSION, TICK, TYPE, VENUE, ReferenceL3Book, encode_packets, generate_day)
from test_engine_e2e import MiniVenue, run_engine

PRICE4 = 1_000_000                  # $100.00 in Price(4)
PRICE = PRICE4 * itch50.PRICE_SCALE


def named_books(tick=TICK) -> Books:
    return Books({(VENUE, locate) for locate in LOCATES}, lambda venue, instrument: tick)


def message(layout, stamp=5, **fields) -> bytes:
    return layout.pack(message_type=bytes([TYPE[layout.name]]), timestamp=stamp.to_bytes(6, "big"), **fields)


def add(ref, side=itch50.BUY, shares=100, price=PRICE4, locate=7, stamp=5):
    return message(itch50.ADD_ORDER, stamp, stock_locate=locate, order_ref=ref, side=side, shares=shares, price=price)


def executed(ref, shares, locate=7):
    return message(itch50.ORDER_EXECUTED, stock_locate=locate, order_ref=ref, executed_shares=shares)


def packet(messages, seq=1, count=None) -> bytes:
    """A MoldUDP64 packet; `count` overrides the header's message count."""
    if count is None:
        return itch50.encode_packet(SESSION, seq, messages)
    return (itch50.MOLD_HEADER.struct.pack(SESSION, seq, count)
            + b"".join(struct.pack(">H", len(m)) + m for m in messages))


def test_the_l3_book_equals_the_reference_after_every_message_of_a_day():
    """1,000,000 messages, one a packet: after each, the touched instrument's top of book in C equals
    the reference's, and decode_itch's update (or none) is the reference's. About 20 s here."""
    day = generate_day(1_000_000, seed=15)
    data, bounds = encode_packets(day, np.ones(day["type"].size, np.int64))
    books, orders, ref = named_books(), ItchOrders(1 << 20), ReferenceL3Book(dict.fromkeys(LOCATES, TICK))
    view, locates, named = memoryview(data), day["locate"].tolist(), set(LOCATES)
    updates_seen = 0
    for k, (start, end) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        payload = view[start:end]
        updates = decode_itch(payload, books, orders, VENUE, 0, 0)
        assert [update[3:] for update in updates] == ref.packet(payload), k
        if locates[k] in named:
            assert books[VENUE, locates[k]].top() == ref.top(locates[k]), k
        updates_seen += len(updates)
    assert orders.dropped == ref.dropped == {"unknown instrument": int(np.count_nonzero(day["locate"] == 99))}
    assert len(orders) == len(ref.orders) > 0 and updates_seen > 200_000
    assert orders.packets == orders.messages == 1_000_000 and orders.gaps == 0
    for locate in LOCATES:                       # every level, not only the top
        for side, levels in ref.levels[locate].items():
            assert books[VENUE, locate].depth(side, 10**6) == sorted(levels.items(), reverse=side == 1)


def test_packets_of_many_messages_give_one_update_per_changed_instrument():
    """Per packet, in order of first change: the seq and Timestamp of the last message applied to the
    instrument, its top after the packet and its last trade."""
    day = generate_day(200_000, seed=16)
    counts = np.random.default_rng(16).integers(1, 17, day["type"].size)
    counts = counts[:np.searchsorted(np.cumsum(counts), day["type"].size)]
    counts = np.append(counts, day["type"].size - counts.sum())
    data, bounds = encode_packets(day, counts)
    books, orders, ref = named_books(), ItchOrders(1 << 20), ReferenceL3Book(dict.fromkeys(LOCATES, TICK))
    view, several = memoryview(data), 0
    for k, (start, end) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        payload = view[start:end]
        updates = decode_itch(payload, books, orders, VENUE, 10 * k, 10 * k + 1)
        assert [update[3:] for update in updates] == ref.packet(payload), k
        assert all(u[0] == 10 * k + 1 and u[1] > 0 and u[2] == 10 * k for u in updates)
        several += len(updates) > 1
    assert several > 10_000 and orders.dropped == ref.dropped
    assert [books[VENUE, locate].top() for locate in LOCATES] == [ref.top(locate) for locate in LOCATES]


def test_the_generated_day_is_what_the_declaration_decodes():
    """The vectorised encoder against the protocol module's own decoder, field by field."""
    day = generate_day(3_000, seed=17)
    data, bounds = encode_packets(day, np.full(300, 10))
    decoded = [row for start, end in zip(bounds[:-1], bounds[1:])
               for row in itch50.PROTOCOL.decode(bytes(data[start:end]))]
    assert [seq for seq, _letter, _record in decoded] == list(range(1, 3_001))
    for k, (_seq, letter, record) in enumerate(decoded):
        assert ord(letter) == day["type"][k] and record["stock_locate"] == day["locate"][k]
        assert int.from_bytes(bytes(record["timestamp"]), "big") == day["stamp"][k]
        for field, column in (("order_ref", "ref"), ("original_ref", "ref"), ("new_ref", "new_ref"),
                              ("price", "price"), ("execution_price", "price"), ("shares", "shares"),
                              ("executed_shares", "shares"), ("cancelled_shares", "shares")):
            if field in record.dtype.names:
                assert record[field] == day[column][k], (k, field)


OK = add(1)
BAD_INPUT = {   # reason -> (the packet, the top of book after it: what the good messages in it left)
    "count beyond messages": (packet([OK, add(2, shares=5)], count=3), (PRICE, 105, 0, 0)),
    "message past datagram": (packet([OK])[:-len(OK)] + OK[:10], (0, 0, 0, 0)),
    "zero-length message": (packet([OK, b"", add(2, shares=5)]), (PRICE, 105, 0, 0)),
    "bytes after messages": (packet([OK]) + b"\x00", (PRICE, 100, 0, 0)),
    "unknown message type": (packet([b"Z" + bytes(30), OK]), (PRICE, 100, 0, 0)),
    "wrong message length": (packet([OK[:-1], OK + b"\x00", OK]), (PRICE, 100, 0, 0)),
    "unknown instrument": (packet([add(1, locate=8), OK]), (PRICE, 100, 0, 0)),
    "unknown order ref": (packet([OK, executed(404, 1), executed(1, 1, locate=3),
                                  message(itch50.ORDER_CANCEL, stock_locate=7, order_ref=404, cancelled_shares=1),
                                  message(itch50.ORDER_DELETE, stock_locate=7, order_ref=404),
                                  message(itch50.ORDER_REPLACE, stock_locate=7, original_ref=404, new_ref=9,
                                          shares=1, price=PRICE4)]), (PRICE, 100, 0, 0)),
    "duplicate order ref": (packet([OK, add(1, itch50.SELL, price=PRICE4 + 100), add(2, shares=5),
                                    message(itch50.ORDER_REPLACE, stock_locate=7, original_ref=2, new_ref=1,
                                            shares=1, price=PRICE4)]), (PRICE, 105, 0, 0)),
    "bad side": (packet([add(1, side=b"Q"), OK]), (PRICE, 100, 0, 0)),
    "price off the tick grid": (packet([add(1, price=PRICE4 + 1), OK]), (PRICE, 100, 0, 0)),
    "shares beyond the order": (packet([OK, executed(1, 101)]), (PRICE, 100, 0, 0)),
}


@pytest.mark.parametrize("reason", BAD_INPUT)
def test_bad_itch_is_counted_by_reason_and_dropped(reason):
    payload, top = BAD_INPUT[reason]
    books, orders = named_books(), ItchOrders(16)
    count = {"unknown order ref": 5, "wrong message length": 2, "duplicate order ref": 2}.get(reason, 1)
    updates = decode_itch(payload, books, orders, VENUE, 0, 0)
    assert orders.dropped == {reason: count}
    assert books[VENUE, 7].top() == top and [u[7:11] for u in updates] == ([top] if any(top) else [])
    assert set(books) <= {(VENUE, 7), (VENUE, 3)}              # no book for locate 8, which the config does not name


def test_an_add_past_the_order_bound_is_dropped_and_the_map_keeps_working():
    books, orders = named_books(), ItchOrders(3)
    decode_itch(packet([add(ref, shares=ref) for ref in range(1, 6)]), books, orders, VENUE, 0, 0)
    assert orders.dropped == {"order map full": 2} and len(orders) == 3 and orders.find(7, 4) is None
    decode_itch(packet([message(itch50.ORDER_DELETE, stock_locate=7, order_ref=2), add(4, shares=4)], seq=6),
                books, orders, VENUE, 0, 0)
    assert orders.find(7, 4) == (1, PRICE, 4) and books[VENUE, 7].top() == (PRICE, 8, 0, 0)


def test_the_order_map_grows_and_deletes_without_losing_an_order():
    """Many live orders (several table growths), then every other one deleted: the rest are all found."""
    books, orders = named_books(), ItchOrders(1 << 16)
    refs = list(range(1, 40_001))
    for start in range(0, len(refs), 400):
        decode_itch(packet([add(ref, shares=1 + ref % 7) for ref in refs[start:start + 400]], seq=1 + start),
                    books, orders, VENUE, 0, 0)
    deletes = [message(itch50.ORDER_DELETE, stock_locate=7, order_ref=ref) for ref in refs[::2]]
    for start in range(0, len(deletes), 400):
        decode_itch(packet(deletes[start:start + 400], seq=50_000 + start), books, orders, VENUE, 0, 0)
    assert len(orders) == 20_000 and not orders.dropped
    assert all(orders.find(7, ref) == (1, PRICE, 1 + ref % 7) for ref in refs[1::2])
    assert all(orders.find(7, ref) is None for ref in refs[::2])
    assert books[VENUE, 7].top() == (PRICE, sum(1 + ref % 7 for ref in refs[1::2]), 0, 0)


def test_what_is_not_a_packet_raises_and_heartbeats_and_end_of_session_give_nothing():
    books, orders = named_books(), ItchOrders(16)
    for payload in (b"", packet([OK])[:itch50.MOLD_HEADER.size - 1]):
        with pytest.raises(DatagramError, match="short datagram"):
            decode_itch(payload, books, orders, VENUE, 0, 0)
    for count in (itch50.HEARTBEAT, itch50.END_OF_SESSION):
        assert decode_itch(packet([], seq=5, count=count), books, orders, VENUE, 0, 0) == ()
    assert orders.packets == 0 and not orders.dropped and not books
    with pytest.raises(TypeError):
        decode_itch(packet([OK]), books, "not an order map", VENUE, 0, 0)


def test_the_feed_sequence_counts_gaps_duplicates_and_regressions():
    books, orders = named_books(), ItchOrders(64)
    for seq, n in ((1, 2), (3, 1), (9, 2), (9, 2), (5, 1), (11, 1)):     # 4-8 missing, 9 again, 5 late
        decode_itch(packet([add(1000 * seq + k) for k in range(n)], seq=seq), books, orders, VENUE, 0, 0)
    assert (orders.gaps, orders.duplicates, orders.regressions) == (5, 1, 1)


def test_mangled_packets_never_raise_past_the_decoder():
    """Random bytes changed, cut or added in real packets: counted, never an exception but a short
    header's. The tick is $1, so a mangled price seldom lands on the grid far from the book."""
    rng = np.random.default_rng(18)
    books, orders = named_books(tick=10**8), ItchOrders(256)
    base = [add(ref, itch50.BUY if ref % 2 else itch50.SELL, price=PRICE4 + (ref % 5 - 2) * 10**4, locate=3 + ref % 10)
            for ref in range(1, 9)] + [executed(3, 50), message(itch50.ORDER_DELETE, stock_locate=4, order_ref=1)]
    for k in range(20_000):
        payload = bytearray(packet(base, seq=1 + 10 * k))
        for _ in range(int(rng.integers(1, 6))):
            payload[int(rng.integers(0, len(payload)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            payload = payload[:int(rng.integers(0, len(payload)))]
        try:
            decode_itch(bytes(payload), books, orders, VENUE, 0, 0)
        except DatagramError as exc:
            assert exc.args == ("short datagram",) and len(payload) < itch50.MOLD_HEADER.size
    assert sum(orders.dropped.values()) > 20_000 and len(orders) <= 256


@pytest.mark.parametrize("value, error", [("itch50", None), ("wm", None), ("nope", "venues[0].md: 'nope'")])
def test_the_venue_md_protocol_is_checked(value, error):
    text = f"""
[[venues]]
id = 1
feed = "127.0.0.1:5001"
gateway = "127.0.0.1:6001"
md = "{value}"
[[models]]
type = "imbalance-taker"
venue = 1
instrument = 7
"""
    if error is None:
        assert parse_config(text).venues[0].md == value
        assert parse_config(text.replace(f'md = "{value}"', "")).venues[0].md == "wm"
        return
    with pytest.raises(ConfigError, match=r"venues\[0\]\.md: 'nope' is not one of wm, itch50"):
        parse_config(text)


def test_a_bad_md_protocol_is_one_line_exit_2(tmp_path):
    config = tmp_path / "engine.toml"
    config.write_text('[[venues]]\nid = 1\nfeed = "127.0.0.1:5001"\ngateway = "127.0.0.1:6001"\nmd = "nope"\n')
    result = subprocess.run([sys.executable, "-m", "engine", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "venues[0].md" in result.stderr


class Collected:
    """A producer that keeps what is published."""

    def __init__(self):
        self.published = []

    def publish(self, payload) -> int:
        self.published.append(MARKET_UPDATE.struct.unpack(payload))
        return len(self.published) - 1


def test_the_handler_reads_an_itch_feed_and_counts_its_drops_with_the_datagrams():
    """The path processes mode takes: poll() over a WM feed and an ITCH feed."""
    wm_feed, itch_feed, sender = udp_receiver(), udp_receiver(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    updates = Collected()
    handler = MarketDataHandler([wm_feed, itch_feed], named_books(), updates, order_feeds={1: VENUE})
    try:
        sends = [packet([OK, add(2, itch50.SELL, price=PRICE4 + 100)], seq=1), b"short",
                 packet([b"Z", executed(2, 10)], seq=3), packet([add(3, locate=8)], seq=5)]
        for payload in sends:
            sender.sendto(payload, itch_feed.getsockname())
        sender.sendto(b"XX" + bytes(40), wm_feed.getsockname())
        deadline = time.monotonic() + 5
        while handler.handled < 3 and time.monotonic() < deadline:
            handler.poll()
        handler.poll()
    finally:
        for sock in (wm_feed, itch_feed, sender):
            sock.close()
    assert [u[3:] for u in updates.published] == [
        (2, 5, VENUE, 7, PRICE, 100, PRICE + TICK, 100, 0, 0), (4, 5, VENUE, 7, PRICE, 100, PRICE + TICK, 90,
                                                                PRICE + TICK, 10)]
    assert handler.handled == 3 and handler.sequence_counts() == {"md_gaps": 0, "md_duplicates": 0,
                                                                  "md_regressions": 0}
    assert handler.drop_counts() == {"short datagram": 1, "unknown magic": 1, "unknown message type": 1,
                                     "unknown instrument": 1}


def test_the_engine_trades_on_an_itch_feed_with_the_message_seq_as_trigger(tmp_path):
    """The real engine, its venue's feed ITCH: a lopsided book, then a bid share more in each packet between
    an add for a locate the config does not name and a system event. Each packet's order names the seq of
    its locate-7 message."""
    venue = MiniVenue()
    venue.start()
    sends = [packet([add(1, shares=900), add(2, itch50.SELL, price=PRICE4 + 100)], seq=1)]
    triggers = [2]
    for k in range(29):
        seq = 3 + 3 * k
        sends.append(packet([add(100 + k, locate=9), add(200 + k, shares=1),
                             message(itch50.SYSTEM_EVENT, event_code=b"O")], seq=seq))
        triggers.append(seq + 1)
    garbage = [b"", packet([OK], seq=1000, count=2), packet([b""], seq=1002)]
    summary, _tel = run_engine(tmp_path, venue, "none", sends + garbage, f"itch-{os.getpid()}",
                               venue_options='md = "itch50"')
    venue.stop = True
    venue.join(timeout=5)
    assert [trigger for trigger, *_ in venue.orders] == triggers
    assert all(side == ORDER_BUY and price == PRICE + TICK for _, _, side, price, _ in venue.orders)
    assert summary["positions"] == {"1": {"7": 30}} and summary["md_handled"] == 32
    assert summary["md_dropped"] == {"unknown instrument": 29, "short datagram": 1, "count beyond messages": 1,
                                     "duplicate order ref": 1, "zero-length message": 1}
