"""Trade models: read MarketUpdates, write the order each one ideally wants.

A model owns one slot of the ideal-orders SeqlockVector per (venue,
instrument) it trades, and overwrites it on every update it reacts to; the
Overseer always sees the latest wish, never a backlog. Models are pure
functions of the updates they see, so a replay reproduces them exactly.
"""
from __future__ import annotations

from engine.clock import tsc
from engine.messages import (BUY, DAY, IDEAL_ORDER, IOC, MARKET_UPDATE, SELL, UPDATE_INSTRUMENT, UPDATE_VENUE,
                             timing_word)

UPDATE = MARKET_UPDATE.struct
IDEAL = IDEAL_ORDER.struct
TIMING_WORD = timing_word("trade_model", "ideal_order")
FLAT = 0


class TradeModel:
    """Subclasses implement decide(update fields) -> wish or None (None: no change).

    A wish is a tuple (side, price, qty, time_in_force); side FLAT means no order wanted.
    decide() must not change the model's state beyond `last`: the single-process engine
    rehearses the real models on synthetic updates to keep them in cache, and puts back
    `last` and `writes` afterwards (engine.hot_path.HotPathWarmer).
    """
    name = "model"

    def __init__(self, model_id: int, venue: int, instrument: int, slot: int):
        self.model_id, self.venue, self.instrument, self.slot = model_id, venue, instrument, slot
        self.last: tuple | None = None
        self.writes = 0                   # ideal orders published so far: the slot's version is 2 x this

    def on_update(self, raw: bytes, vector, timing=None,
                  venue_at: int = UPDATE_VENUE, instrument_at: int = UPDATE_INSTRUMENT) -> bool:
        """Take one MarketUpdate from the md queue; write the ideal order it causes, if any.
        The field positions are defaults so that they are read as locals, not globals."""
        update = UPDATE.unpack(raw)
        if update[venue_at] != self.venue or update[instrument_at] != self.instrument:
            return False
        ideal = self.react(update)
        if ideal is None:
            return False
        self.publish(ideal, vector, timing)
        return True

    def react(self, update: tuple) -> tuple | None:
        """The IdealOrder fields a MarketUpdate (its fields, for this model's instrument) makes the
        model want, or None when its wish is unchanged. Each one returned must be published."""
        (origin, _pub, kernel_rx, md_seq, _send, venue, instrument, bid_px, bid_qty, ask_px, ask_qty,
         trade_px, trade_qty) = update
        wish = self.decide(bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty)
        if wish is None or wish == self.last:
            return None
        self.last = wish
        self.writes += 1
        side, price, qty, time_in_force = wish
        decided = tsc()
        return (origin, decided, md_seq, self.model_id, venue, instrument, side, time_in_force, price, qty,
                decided, kernel_rx)

    def publish(self, ideal: tuple, vector, timing=None) -> None:
        """Write an ideal order to the model's slot (and its stamp on the timing queue)."""
        vector.write(self.slot, IDEAL.pack(*ideal))
        if timing is not None:
            timing.publish_words(TIMING_WORD, ideal[0], ideal[1], ideal[2])

    def decide(self, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty) -> tuple | None:
        raise NotImplementedError


class JoinTheTouch(TradeModel):
    """Rest `qty` at the best bid while the spread is at most `max_spread` (price units)."""
    name = "join-the-touch"

    def __init__(self, model_id, venue, instrument, slot, qty: int = 1, max_spread: int = 10**6):
        super().__init__(model_id, venue, instrument, slot)
        self.qty, self.max_spread = qty, max_spread

    def decide(self, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty):
        if not bid_px or not ask_px or ask_px - bid_px > self.max_spread:
            return FLAT, 0, 0, DAY
        return BUY, bid_px, self.qty, DAY


class ImbalanceTaker(TradeModel):
    """Take the thin side when the top of book is lopsided.

    Buys `qty` at the ask (IOC) when bid_qty / (bid_qty + ask_qty) >= threshold, sells at the
    bid when it is <= 1 - threshold. `threshold` is in percent, so the model stays in integers.
    """
    name = "imbalance-taker"

    def __init__(self, model_id, venue, instrument, slot, qty: int = 1, threshold_pct: int = 70):
        super().__init__(model_id, venue, instrument, slot)
        self.qty, self.threshold = qty, threshold_pct

    def decide(self, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty):
        total = bid_qty + ask_qty
        if not bid_px or not ask_px or total <= 0:
            return None
        self.last = None                  # every lopsided update is a fresh IOC, even if identical
        share = 100 * bid_qty
        if share >= self.threshold * total:
            return BUY, ask_px, self.qty, IOC
        if share <= (100 - self.threshold) * total:
            return SELL, bid_px, self.qty, IOC
        return None


MODELS = {cls.name: cls for cls in (JoinTheTouch, ImbalanceTaker)}
