"""Trade models: read MarketUpdates, write the order each one ideally wants.

A model owns one slot of the ideal-orders SeqlockVector per (venue,
instrument) it trades, and overwrites it on every update it reacts to; the
Overseer always sees the latest wish, never a backlog. Models are pure
functions of the updates they see, so a replay reproduces them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.clock import tsc
from engine.messages import ACTORS, IDEAL_ORDER, KINDS, MARKET_UPDATE, TIMING, struct_of
from engine.protocol.orders import BUY, DAY, IOC, SELL

UPDATE = struct_of(MARKET_UPDATE)
IDEAL = struct_of(IDEAL_ORDER)
TIMING_STRUCT = struct_of(TIMING)
PUBLISHER = ACTORS["trade_model"]
KIND = KINDS["ideal_order"]
FLAT = 0


@dataclass
class Wish:
    side: int
    price: int
    qty: int
    time_in_force: int


class TradeModel:
    """Subclasses implement decide(update fields) -> Wish | None (None: no change)."""
    name = "model"

    def __init__(self, model_id: int, venue: int, instrument: int, slot: int):
        self.model_id, self.venue, self.instrument, self.slot = model_id, venue, instrument, slot
        self.last: Wish | None = None

    def on_update(self, raw: bytes, vector, timing=None) -> bool:
        (origin, _pub, kernel_rx, md_seq, _send, venue, instrument, bid_px, bid_qty, ask_px, ask_qty,
         trade_px, trade_qty) = UPDATE.unpack(raw)
        if venue != self.venue or instrument != self.instrument:
            return False
        wish = self.decide(bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty)
        if wish is None or wish == self.last:
            return False
        self.last = wish
        decided = tsc()
        vector.write(self.slot, IDEAL.pack(origin, decided, md_seq, self.model_id, venue, instrument,
                                           wish.side, wish.time_in_force, wish.price, wish.qty, decided,
                                           kernel_rx))
        if timing is not None:
            timing.publish(TIMING_STRUCT.pack(PUBLISHER, KIND, origin, decided, md_seq))
        return True

    def decide(self, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty) -> Wish | None:
        raise NotImplementedError


class JoinTheTouch(TradeModel):
    """Rest `qty` at the best bid while the spread is at most `max_spread` (price units)."""
    name = "join-the-touch"

    def __init__(self, model_id, venue, instrument, slot, qty: int = 1, max_spread: int = 10**6):
        super().__init__(model_id, venue, instrument, slot)
        self.qty, self.max_spread = qty, max_spread

    def decide(self, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty):
        if not bid_px or not ask_px or ask_px - bid_px > self.max_spread:
            return Wish(FLAT, 0, 0, DAY)
        return Wish(BUY, bid_px, self.qty, DAY)


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
            return Wish(BUY, ask_px, self.qty, IOC)
        if share <= (100 - self.threshold) * total:
            return Wish(SELL, bid_px, self.qty, IOC)
        return None


MODELS = {cls.name: cls for cls in (JoinTheTouch, ImbalanceTaker)}
