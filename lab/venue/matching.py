"""The venue's matching engine: our orders against the book the venue publishes.

The venue's own feed is "the market": `on_feed` keeps its L2 book per
instrument from the datagrams it publishes. Our (the engine's) orders never
show in that book; they interact with it:

- A marketable order (buy price >= best ask, sell price <= best bid) fills at
  once against the displayed levels, best first, up to each level's quantity,
  at the level's price; what it takes is removed from the venue's copy of the
  level until the feed sets that level again. Price 0 makes a market order
  (a buy walks every ask, a sell every bid). The remainder of an IOC or a
  market order is cancelled; a DAY limit order rests at its price.
- A resting order waits behind the quantity a `QueueModel` estimates is ahead
  of it. Trades at its price eat that queue first and then fill the order; a
  trade through its price, or the opposite side reaching its price, fills it
  fully at its price. Those fills go to `listener` (the order gateway sets it
  to send them) as well as being returned by `on_feed`.

Prices are int64 ticks of 1e-8, quantities int64, times int64 ns.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.protocol import md
from engine.messages import BUY, DAY, IOC, SELL
from lab.errors import LabError

# reject reasons (the binary Reject's `reason`, nonzero)
REJECT_BAD_QTY = 1
REJECT_UNKNOWN_INSTRUMENT = 2
REJECT_UNKNOWN_ORDER = 3          # cancel of an order that is not resting (never was, or done)
REJECT_DUPLICATE_ID = 4           # client_order_id of an order still open
REJECT_BAD_FIELD = 5              # side, time in force or price out of range
REJECT_REASONS = {REJECT_BAD_QTY: "bad qty", REJECT_UNKNOWN_INSTRUMENT: "unknown instrument",
                  REJECT_UNKNOWN_ORDER: "unknown order", REJECT_DUPLICATE_ID: "duplicate id",
                  REJECT_BAD_FIELD: "bad field"}


class VenueError(LabError):
    """The venue cannot do what it was asked: a busy port, a feed of another venue."""


@dataclass(frozen=True)
class Event:
    """One thing the venue tells the client about a request or an order.

    kind: "ack", "fill", "reject" or "cancelled". `client_order_id` is the id of
    the request answered (a cancel request's own id for its ack or reject);
    `order_client_order_id` is the order's id.
    """
    kind: str
    request: str                   # "new" or "cancel": the kind of request the event is about
    client_order_id: int
    order_client_order_id: int
    venue_order_id: int
    instrument: int
    side: int
    price: int                     # execution price for a fill, the order's price otherwise
    qty: int                       # quantity of this fill; 0 for other kinds
    leaves_qty: int
    cum_qty: int
    order_qty: int
    avg_price: int                 # ticks, cum notional // cum qty (0 before any fill)
    reason: int                    # reject reason, 0 otherwise
    venue_ts_ns: int
    exec_id: int = 0


# -- queue-position models --------------------------------------------------------------------

class QueueModel:
    """How much quantity is ahead of a resting order; subclasses say how cancels move it.

    `ahead` may be fractional (the power-law model splits a decrease).
    """

    name = ""

    def on_entry(self, level_qty: int) -> float:
        return float(level_qty)

    def on_level_change(self, ahead: float, previous_qty: int, traded_qty: int, new_qty: int) -> float:
        """`ahead` after the level went from previous_qty to new_qty, traded_qty of it by trades."""
        raise NotImplementedError


class RiskAverse(QueueModel):
    """Only trades at our price move us forward; a shrinking level only caps what is ahead."""

    name = "risk-averse"

    def on_level_change(self, ahead, previous_qty, traded_qty, new_qty):
        return min(ahead, new_qty)


class PowerLaw(QueueModel):
    """hftbacktest's ProbQueueModel with PowerProbQueueFunc: f(x) = x**n.

    A decrease of the level not explained by trades (`cancelled`) is split:
    prob = f(back) / (f(back) + f(front)) is the probability that a cancel was
    behind us, so the share ahead is f(front) / (f(front) + f(back)), with
    front = ahead, back = level after trades - ahead. A cancel larger than what
    is behind also comes out of the front. Then ahead is capped by the level.
    """

    name = "power-law"

    def __init__(self, n: float = 2.0):
        if n <= 0:
            raise VenueError(f"power-law queue model needs n > 0, got {n}")
        self.n = n

    def on_level_change(self, ahead, previous_qty, traded_qty, new_qty):
        level_after_trades = max(previous_qty - traded_qty, 0)
        cancelled = level_after_trades - new_qty
        if cancelled <= 0:
            return min(ahead, new_qty)
        front, back = ahead, max(level_after_trades - ahead, 0.0)
        f_front, f_back = front ** self.n, back ** self.n
        behind_share = f_back / (f_back + f_front) if f_back + f_front else 1.0
        estimate = front - (1.0 - behind_share) * cancelled + min(back - behind_share * cancelled, 0.0)
        return max(min(estimate, new_qty), 0.0)


QUEUE_MODELS = {RiskAverse.name: RiskAverse, PowerLaw.name: PowerLaw}


def queue_model(name: str, **params) -> QueueModel:
    """A queue model by name: "risk-averse", or "power-law" (n=2.0)."""
    cls = QUEUE_MODELS.get(name)
    if cls is None:
        raise VenueError(f"unknown queue model {name!r}; expected one of {', '.join(QUEUE_MODELS)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise VenueError(f"queue model {name}: {exc}") from None


# -- the book and our orders ------------------------------------------------------------------

@dataclass
class _Book:
    bids: dict[int, int]
    asks: dict[int, int]

    def side(self, side: int) -> dict[int, int]:
        """The levels of a side: 1 bid (where buys rest), 2 ask (where sells rest)."""
        return self.bids if side == md.BID else self.asks

    def trim_to_tops(self, best_bid: md.L2Update, best_ask: md.L2Update) -> None:
        """Drop levels better than the datagram's declared best bid and ask: stale ones."""
        if best_bid.action == md.SET:
            self.bids = {p: q for p, q in self.bids.items() if p <= best_bid.price}
        if best_ask.action == md.SET:
            self.asks = {p: q for p, q in self.asks.items() if p >= best_ask.price}

    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None


@dataclass
class _Order:
    client_order_id: int
    venue_order_id: int
    instrument: int
    side: int
    price: int
    qty: int
    leaves: int
    cum_qty: int = 0
    notional: int = 0
    ahead: float = 0.0


class MatchingEngine:
    def __init__(self, venue: int, queue_model: QueueModel, first_order_id: int = 1):
        self.venue, self.queue_model = venue, queue_model
        self.books: dict[int, _Book] = {}
        self.open: dict[int, _Order] = {}          # client_order_id -> resting order
        self.next_order_id, self.next_exec_id = first_order_id, 1
        self.counts: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()     # by reason (REJECT_REASONS)
        self.listener: Callable[[list[Event]], None] | None = None   # gets the fills on_feed causes

    # -- the market --------------------------------------------------------------------------
    def on_feed(self, datagram: md.MdDatagram, now_ns: int | None = None) -> list[Event]:
        """Apply one of the venue's own datagrams (at now_ns, default: the clock now).

        Returns the fills of resting orders it causes, after giving them to `listener`.
        """
        if datagram.venue != self.venue:
            raise VenueError(f"venue {self.venue} got a datagram of venue {datagram.venue}")
        now_ns = time.time_ns() if now_ns is None else now_ns
        book = self.books.setdefault(datagram.instrument, _Book({}, {}))
        resting = [o for o in self.open.values() if o.instrument == datagram.instrument]
        before = {o.client_order_id: book.side(o.side).get(o.price, 0) for o in resting}
        traded = Counter()
        events: list[Event] = []
        for trade in datagram.trades:
            traded[trade.price] += trade.qty
            for order in resting:
                if order.leaves:
                    events += self._on_trade(order, trade, now_ns)
        for update in datagram.updates:
            levels = book.side(update.side)
            if update.action == md.DELETE or update.qty <= 0:
                levels.pop(update.price, None)
            else:
                levels[update.price] = update.qty
        book.trim_to_tops(datagram.updates[0], datagram.updates[1])
        for order in resting:
            if not order.leaves:
                continue
            order.ahead = self.queue_model.on_level_change(
                order.ahead, before[order.client_order_id], traded[order.price],
                book.side(order.side).get(order.price, 0))
            opposite = book.best_ask() if order.side == BUY else book.best_bid()
            if opposite is not None and _reaches(order.side, opposite, order.price):
                events.append(self._fill(order, order.price, order.leaves, now_ns))
        for order in resting:
            if not order.leaves:
                del self.open[order.client_order_id]
        if events and self.listener is not None:
            self.listener(events)
        return events

    def _on_trade(self, order: _Order, trade: md.Trade, now_ns: int) -> list[Event]:
        if trade.price == order.price:
            order.ahead -= trade.qty
            if order.ahead >= 0:
                return []
            qty = min(order.leaves, int(-order.ahead))
            order.ahead = 0.0
            return [self._fill(order, order.price, qty, now_ns)] if qty else []
        if _reaches(order.side, trade.price, order.price):       # traded through our price
            order.ahead = 0.0
            return [self._fill(order, order.price, order.leaves, now_ns)]
        return []

    # -- our requests ------------------------------------------------------------------------
    def new_order(self, instrument: int, side: int, price: int, qty: int, time_in_force: int,
                  client_order_id: int, now_ns: int) -> list[Event]:
        """Accept (ack, immediate fills, IOC remainder cancelled) or reject one order."""
        def reject(reason: int) -> list[Event]:
            self.counts["rejects"] += 1
            self.rejects[REJECT_REASONS[reason]] += 1
            return [Event("reject", "new", client_order_id, client_order_id, 0, instrument, side, price, 0, 0,
                          0, qty, 0, reason, now_ns)]
        if qty <= 0:
            return reject(REJECT_BAD_QTY)
        if side not in (BUY, SELL) or time_in_force not in (DAY, IOC) or price < 0:
            return reject(REJECT_BAD_FIELD)
        book = self.books.get(instrument)
        if book is None:
            return reject(REJECT_UNKNOWN_INSTRUMENT)
        if client_order_id in self.open:
            return reject(REJECT_DUPLICATE_ID)
        self.counts["orders"] += 1
        order = _Order(client_order_id, self.next_order_id, instrument, side, price, qty, qty)
        self.next_order_id += 1
        events = [self._event("ack", order, now_ns)]
        is_market = price == 0
        levels = book.asks if side == BUY else book.bids
        for level_price in sorted(levels, reverse=side == SELL):
            if not order.leaves or not (is_market or _reaches(side, level_price, price)):
                break
            qty_here = min(order.leaves, levels[level_price])
            levels[level_price] -= qty_here
            if not levels[level_price]:
                del levels[level_price]
            events.append(self._fill(order, level_price, qty_here, now_ns))
        if order.leaves and (time_in_force == IOC or is_market):
            order.leaves = 0
            self.counts["cancels"] += 1
            events.append(self._event("cancelled", order, now_ns))
        elif order.leaves:
            order.ahead = self.queue_model.on_entry(book.side(side).get(price, 0))
            self.open[client_order_id] = order
        return events

    def cancel(self, client_order_id: int, orig_client_order_id: int, now_ns: int) -> list[Event]:
        """Cancel a resting order (a "cancelled" event), or reject the request."""
        order = self.open.pop(orig_client_order_id, None)
        if order is None:
            self.counts["rejects"] += 1
            self.rejects[REJECT_REASONS[REJECT_UNKNOWN_ORDER]] += 1
            return [Event("reject", "cancel", client_order_id, orig_client_order_id, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          REJECT_UNKNOWN_ORDER, now_ns)]
        order.leaves = 0
        self.counts["cancels"] += 1
        return [self._event("cancelled", order, now_ns, request="cancel", request_id=client_order_id)]

    def cancel_all(self, now_ns: int) -> list[Event]:
        """Cancel every resting order (cancel on disconnect)."""
        return [event for cid in list(self.open) for event in self.cancel(cid, cid, now_ns)]

    def rejects_by_reason(self) -> dict[str, int]:
        """The requests rejected, by reason (REJECT_REASONS' names); they sum to stats()["rejects"]."""
        return dict(self.rejects)

    def stats(self) -> dict[str, int]:
        """Counters: orders, rejects, cancels, fills and filled qty per side, orders resting."""
        keys = ("orders", "rejects", "cancels", "buy_fills", "buy_qty", "sell_fills", "sell_qty")
        return {**{key: self.counts[key] for key in keys}, "resting": len(self.open)}

    # -- events ------------------------------------------------------------------------------
    def _fill(self, order: _Order, price: int, qty: int, now_ns: int) -> Event:
        order.leaves -= qty
        order.cum_qty += qty
        order.notional += price * qty
        side = "buy" if order.side == BUY else "sell"
        self.counts[f"{side}_fills"] += 1
        self.counts[f"{side}_qty"] += qty
        exec_id, self.next_exec_id = self.next_exec_id, self.next_exec_id + 1
        return self._event("fill", order, now_ns, price=price, qty=qty, exec_id=exec_id)

    def _event(self, kind: str, order: _Order, now_ns: int, price: int | None = None, qty: int = 0,
               exec_id: int = 0, request: str = "new", request_id: int | None = None) -> Event:
        return Event(kind, request, order.client_order_id if request_id is None else request_id,
                     order.client_order_id, order.venue_order_id, order.instrument, order.side,
                     order.price if price is None else price, qty, order.leaves, order.cum_qty, order.qty,
                     order.notional // order.cum_qty if order.cum_qty else 0, 0, now_ns, exec_id)


def _reaches(side: int, other_price: int, our_price: int) -> bool:
    """Whether a price on the other side meets ours: at or below a buy, at or above a sell."""
    return other_price <= our_price if side == BUY else other_price >= our_price
