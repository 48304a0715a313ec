"""The venue's matching engine: hand-worked examples per rule, and random streams."""
import random

import pytest

from engine.protocol import md
from engine.messages import BUY, DAY, IOC, SELL
from lab.errors import LabError
from lab.venue.matching import (REJECT_BAD_FIELD, REJECT_BAD_QTY, REJECT_DUPLICATE_ID, REJECT_UNKNOWN_INSTRUMENT,
                                REJECT_UNKNOWN_ORDER, MatchingEngine, PowerLaw, RiskAverse, VenueError,
                                queue_model)

VENUE, INSTRUMENT, T0 = 3, 42, 1_700_000_000_000_000_000
P = 10**8                       # one currency unit in ticks of 1e-8
BID100, ASK101 = 100 * P, 101 * P


def datagram(bids=(), asks=(), trades=(), deletes=(), seq=1):
    """A datagram: (price, qty) levels set on each side, (side, price) levels deleted, (price, qty) trades."""
    bid_sets = [md.L2Update(md.BID, md.SET, p, q) for p, q in bids]       # best first
    ask_sets = [md.L2Update(md.ASK, md.SET, p, q) for p, q in asks]
    updates = (bid_sets[:1] + ask_sets[:1] + bid_sets[1:] + ask_sets[1:]
               + [md.L2Update(side, md.DELETE, p, 0) for side, p in deletes])
    sent = md.MdDatagram(VENUE, seq, INSTRUMENT, T0 + seq, tuple(updates),
                         tuple(md.Trade(p, q, 0) for p, q in trades))
    return md.decode_md(sent.encode())              # a datagram the wire can carry


def engine(model=None, bids=((BID100, 30),), asks=((ASK101, 5), (ASK101 + P, 7), (ASK101 + 2 * P, 9))):
    matching = MatchingEngine(VENUE, model or RiskAverse(), first_order_id=500)
    matching.on_feed(datagram(bids=bids, asks=asks))
    return matching


def summary(events):
    return [(e.kind, e.price, e.qty, e.leaves_qty) for e in events]


def test_marketable_order_walks_two_levels_at_their_prices():
    matching = engine()
    events = matching.new_order(INSTRUMENT, BUY, ASK101 + P, 10, IOC, 7, T0)
    assert summary(events) == [("ack", ASK101 + P, 0, 10), ("fill", ASK101, 5, 5), ("fill", ASK101 + P, 5, 0)]
    assert [e.venue_order_id for e in events] == [500] * 3
    assert [e.exec_id for e in events] == [0, 1, 2]
    assert events[-1].cum_qty == 10 and events[-1].avg_price == (5 * ASK101 + 5 * (ASK101 + P)) // 10
    # what we took is gone from the venue's book: 2 left at 102, so 3 of 5 are cancelled (IOC)
    events = matching.new_order(INSTRUMENT, BUY, ASK101 + P, 5, IOC, 8, T0)
    assert summary(events) == [("ack", ASK101 + P, 0, 5), ("fill", ASK101 + P, 2, 3),
                               ("cancelled", ASK101 + P, 0, 0)]
    assert matching.stats() == {"orders": 2, "rejects": 0, "cancels": 1, "buy_fills": 3, "buy_qty": 12,
                                "sell_fills": 0, "sell_qty": 0, "resting": 0}


def test_sell_walks_bids_and_market_buy_walks_every_ask():
    matching = engine(bids=((BID100, 4), (BID100 - P, 6)))
    events = matching.new_order(INSTRUMENT, SELL, BID100 - P, 7, IOC, 1, T0)
    assert summary(events)[1:] == [("fill", BID100, 4, 3), ("fill", BID100 - P, 3, 0)]
    events = matching.new_order(INSTRUMENT, BUY, 0, 25, DAY, 2, T0)       # market: remainder never rests
    assert summary(events)[1:] == [("fill", ASK101, 5, 20), ("fill", ASK101 + P, 7, 13),
                                   ("fill", ASK101 + 2 * P, 9, 4), ("cancelled", 0, 0, 0)]
    assert matching.stats()["resting"] == 0


def test_levels_better_than_the_declared_tops_are_dropped_as_stale():
    matching = engine()
    # the best ask is now 102: the 101 level the feed never deleted is stale
    matching.on_feed(datagram(bids=((BID100, 30),), asks=((ASK101 + P, 7),), seq=2))
    events = matching.new_order(INSTRUMENT, BUY, ASK101 + P, 3, IOC, 1, T0)
    assert summary(events)[1:] == [("fill", ASK101 + P, 3, 0)]
    events = matching.new_order(INSTRUMENT, SELL, BID100, 31, IOC, 2, T0)
    assert summary(events)[1:] == [("fill", BID100, 30, 1), ("cancelled", BID100, 0, 0)]


def test_day_remainder_rests_and_a_later_feed_refills_the_level():
    matching = engine()
    events = matching.new_order(INSTRUMENT, BUY, ASK101, 8, DAY, 9, T0)
    assert summary(events) == [("ack", ASK101, 0, 8), ("fill", ASK101, 5, 3)]
    assert matching.stats()["resting"] == 1
    # the feed shows a new ask at our price: it reaches our bid, so we fill fully at our price
    heard = []
    matching.listener = heard.append
    events = matching.on_feed(datagram(bids=((BID100, 30),), asks=((ASK101, 50),), seq=2), now_ns=T0 + 2)
    assert summary(events) == [("fill", ASK101, 3, 0)] and heard == [events]
    assert events[0].venue_ts_ns == T0 + 2 and events[0].cum_qty == 8
    assert matching.stats()["resting"] == 0


def test_risk_averse_order_fills_once_trades_eat_the_queue_ahead():
    matching = engine()
    assert summary(matching.new_order(INSTRUMENT, BUY, BID100, 10, DAY, 1, T0)) == [("ack", BID100, 0, 10)]
    # 30 ahead. The level shrinks to 20 by cancels: ahead is capped at 20, no more.
    assert matching.on_feed(datagram(bids=((BID100, 20),), asks=((ASK101, 5),), seq=2)) == []
    # 15 trade at our price, the level shows 5: ahead 20 - 15 = 5
    assert matching.on_feed(datagram(bids=((BID100, 5),), asks=((ASK101, 5),), trades=((BID100, 15),),
                                     seq=3)) == []
    # 8 trade: 5 were ahead, 3 fill us
    events = matching.on_feed(datagram(bids=((BID100, 1),), asks=((ASK101, 5),), trades=((BID100, 8),), seq=4))
    assert summary(events) == [("fill", BID100, 3, 7)]
    # nothing ahead any more: the next 10 traded at our price fill the 7 left
    events = matching.on_feed(datagram(bids=((BID100, 1),), asks=((ASK101, 5),), trades=((BID100, 10),), seq=5))
    assert summary(events) == [("fill", BID100, 7, 0)]
    assert matching.stats()["resting"] == 0


def power_law_scenario(model):
    """30 ahead, 10 join behind, 10 cancel, then 25 trade at our price. Returns the fills."""
    matching = engine(model)
    matching.new_order(INSTRUMENT, BUY, BID100, 10, DAY, 1, T0)
    matching.on_feed(datagram(bids=((BID100, 40),), asks=((ASK101, 5),), seq=2))
    matching.on_feed(datagram(bids=((BID100, 30),), asks=((ASK101, 5),), seq=3))
    return summary(matching.on_feed(datagram(bids=((BID100, 5),), asks=((ASK101, 5),), trades=((BID100, 25),),
                                             seq=4)))


def test_power_law_cancels_ahead_advance_the_order_by_the_formula():
    # front 30, back 10, n=2: a cancel is ahead of us with weight 30**2 / (30**2 + 10**2) = 0.9,
    # so 9 of the 10 cancelled were ahead: 21 ahead. 25 trade: 4 fill us.
    assert power_law_scenario(PowerLaw(2.0)) == [("fill", BID100, 4, 6)]
    # n=1: 30 / 40 of the 10 were ahead: 22.5 ahead, 25 trade: floor(2.5) = 2 fill us
    assert power_law_scenario(PowerLaw(1.0)) == [("fill", BID100, 2, 8)]
    # risk-averse: still 30 ahead, 25 trade, no fill
    assert power_law_scenario(RiskAverse()) == []


def test_power_law_cancel_larger_than_the_back_comes_out_of_the_front():
    # front 2, back 2, 3 cancelled, n=2: half each, 1.5 from the back leaves 0.5 behind, so
    # ahead = 2 - 1.5 + min(2 - 1.5, 0) = 0.5 (capped by the level's 1)
    assert PowerLaw(2.0).on_level_change(2.0, 4, 0, 1) == 0.5
    # and with trades: a 4-lot level, 1 traded (already out of ahead), shown at 1: 2 cancelled
    assert PowerLaw(2.0).on_level_change(1.0, 4, 1, 1) == pytest.approx(1.0 - 2 * 0.2 + min(2 - 2 * 0.8, 0))


def test_trade_through_or_level_deleted_by_a_trade_through_fills_fully():
    matching = engine()
    matching.new_order(INSTRUMENT, BUY, BID100, 10, DAY, 1, T0)
    events = matching.on_feed(datagram(bids=((BID100 - P, 3),), asks=((ASK101, 5),), deletes=((md.BID, BID100),),
                                       trades=((BID100 - P, 1),), seq=2))
    assert summary(events) == [("fill", BID100, 10, 0)]
    matching.new_order(INSTRUMENT, SELL, ASK101 + 2 * P, 4, DAY, 2, T0)
    assert matching.on_feed(datagram(bids=((BID100, 1),), asks=((ASK101, 5),), trades=((ASK101 + P, 9),),
                                     seq=3)) == []                       # below a sell: not through
    events = matching.on_feed(datagram(bids=((BID100, 1),), asks=((ASK101, 5),), trades=((ASK101 + 3 * P, 1),),
                                       seq=4))
    assert summary(events) == [("fill", ASK101 + 2 * P, 4, 0)]
    assert matching.stats()["sell_qty"] == 4


def test_cancel_of_a_resting_order_then_of_one_that_is_gone():
    matching = engine()
    matching.new_order(INSTRUMENT, BUY, BID100, 10, DAY, 11, T0)
    [cancelled] = matching.cancel(12, 11, T0 + 5)
    assert (cancelled.kind, cancelled.request, cancelled.client_order_id, cancelled.order_client_order_id,
            cancelled.venue_order_id, cancelled.leaves_qty, cancelled.venue_ts_ns) == \
        ("cancelled", "cancel", 12, 11, 500, 0, T0 + 5)
    [again] = matching.cancel(13, 11, T0 + 6)
    assert (again.kind, again.request, again.client_order_id, again.reason) == \
        ("reject", "cancel", 13, REJECT_UNKNOWN_ORDER)
    # the trade that would have filled it fills nothing
    assert matching.on_feed(datagram(bids=((BID100, 1),), asks=((ASK101, 5),), trades=((BID100 - P, 5),),
                                     seq=2)) == []


def test_rejects_carry_their_reason():
    matching = engine()
    matching.new_order(INSTRUMENT, BUY, BID100, 10, DAY, 1, T0)
    cases = [((INSTRUMENT, BUY, BID100, 0, DAY, 2), REJECT_BAD_QTY),
             ((INSTRUMENT, BUY, BID100, -1, DAY, 3), REJECT_BAD_QTY),
             ((INSTRUMENT + 1, BUY, BID100, 1, DAY, 4), REJECT_UNKNOWN_INSTRUMENT),
             ((INSTRUMENT, 0, BID100, 1, DAY, 5), REJECT_BAD_FIELD),
             ((INSTRUMENT, BUY, BID100, 1, 7, 6), REJECT_BAD_FIELD),
             ((INSTRUMENT, BUY, BID100, 1, DAY, 1), REJECT_DUPLICATE_ID)]
    for args, reason in cases:
        [event] = matching.new_order(*args, T0)
        assert (event.kind, event.reason, event.client_order_id) == ("reject", reason, args[-1])
    assert matching.stats()["rejects"] == len(cases)
    assert matching.stats()["orders"] == 1


def test_queue_model_factory_and_a_feed_of_another_venue():
    assert isinstance(queue_model("risk-averse"), RiskAverse)
    assert queue_model("power-law", n=3.0).n == 3.0
    for bad in (lambda: queue_model("fifo"), lambda: queue_model("power-law", m=1),
                lambda: queue_model("power-law", n=0)):
        with pytest.raises(LabError):
            bad()
    with pytest.raises(VenueError, match="venue 3 got a datagram of venue 4"):
        MatchingEngine(VENUE, RiskAverse()).on_feed(md.MdDatagram(4, 1, 1, T0, (
            md.L2Update(md.BID, md.SET, BID100, 1), md.L2Update(md.ASK, md.SET, ASK101, 1))))


def naive_risk_averse_fills(ahead, qty, stream):
    """Reference: a queue of `ahead` lots, consumed one trade at a time; cancels never advance us."""
    filled = []
    for level_qty, trade_qty in stream:
        taken_ahead = min(ahead, trade_qty)
        ahead -= taken_ahead
        fill = min(qty, trade_qty - taken_ahead)
        if fill:
            filled.append(fill)
            qty -= fill
        ahead = min(ahead, level_qty)
    return filled


@pytest.mark.parametrize("seed", range(20))
def test_random_streams_match_the_reference_and_power_law_is_never_behind(seed):
    rng = random.Random(seed)
    start_level, qty = rng.randint(0, 50), rng.randint(1, 40)
    stream = [(rng.randint(0, 60), rng.choice([0, 0, rng.randint(1, 20)])) for _ in range(30)]
    fills = {}
    for model in (RiskAverse(), PowerLaw(2.0)):
        matching = engine(model, bids=((BID100, start_level),) if start_level else ())
        matching.new_order(INSTRUMENT, BUY, BID100, qty, DAY, 1, T0)
        fills[model.name] = []
        for seq, (level_qty, trade_qty) in enumerate(stream, start=2):
            events = matching.on_feed(datagram(bids=((BID100, level_qty),) if level_qty else ((BID100 - P, 1),),
                                               asks=((ASK101, 5),),
                                               deletes=() if level_qty else ((md.BID, BID100),),
                                               trades=((BID100, trade_qty),) if trade_qty else (), seq=seq))
            fills[model.name] += [e.qty for e in events]
            assert all(e.cum_qty + e.leaves_qty == qty for e in events)
    assert fills["risk-averse"] == naive_risk_averse_fills(start_level, qty, stream)
    assert sum(fills["power-law"]) >= sum(fills["risk-averse"])
