"""Overseer: weighs each model's ideal order against what is already working.

For every slot of the ideal-orders vector whose version moved, it compares the
wish with the slot's working order (and anything in flight), and sends what
closes the gap: a new order, a cancel, or nothing. It tracks positions and
cash per venue from acks and fills, and refuses what the risk limits forbid.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from engine.clock import tsc
from engine.messages import ACCOUNT_UPDATE, BUY, IDEAL_ORDER, IOC, ORDER_REQUEST, timing_word

IDEAL = IDEAL_ORDER.struct
REQUEST = ORDER_REQUEST.struct
ACCOUNT = ACCOUNT_UPDATE.struct
REQUEST_TIMING = timing_word("overseer", "order_request")
APPLY_TIMING = timing_word("overseer", "account_update")
NEW, CANCEL = ord("N"), ord("C")         # OrderRequest kinds
PRICE_SCALE = 10**8                       # prices are 1e-8 units of the currency


@dataclass
class RiskLimits:
    max_position: int = 100               # absolute, per (venue, instrument)
    max_open_orders: int = 8              # per venue, including in flight
    max_order_qty: int = 10


@dataclass
class Order:
    client_order_id: int
    venue: int
    instrument: int
    slot: int
    side: int
    price: int
    qty: int
    time_in_force: int
    state: str = "pending"                # pending -> open -> (cancelling) -> done
    filled: int = 0


@dataclass
class VenueAccount:
    cash: int = 0                         # in price units x qty (1e-8 of the currency)
    positions: Counter = field(default_factory=Counter)
    open_orders: int = 0
    connected: bool = True


class Overseer:
    def __init__(self, ideal_vector, slots: list[int], requests, timing=None,
                 limits: RiskLimits | None = None, first_order_id: int = 1, record_applies: bool = False):
        self.vector, self.slots = ideal_vector, list(slots)
        self.requests, self.timing = requests, timing
        self.limits = limits or RiskLimits()
        self.seen = {slot: 0 for slot in self.slots}     # vector version last acted on
        self.working: dict[int, Order] = {}              # slot -> its resting (DAY) order
        self.orders: dict[int, Order] = {}               # client_order_id -> order, until it is done
        self.accounts: dict[int, VenueAccount] = {}
        self.next_id = first_order_id
        self.refused: Counter[str] = Counter()
        self.sent = 0
        # For the persistence log: a timing record each time an account update is taken in,
        # so a replay knows which updates the Overseer had before each of its decisions.
        self.record_applies = record_applies and timing is not None
        self.direct = None            # single-process mode: the gateway's submit, called before the queue write
        self.stale = False            # a slot's latest wish awaits a fresh look (an order of it settled)

    def account(self, venue: int) -> VenueAccount:
        account = self.accounts.get(venue)
        if account is None:
            account = self.accounts[venue] = VenueAccount()
        return account

    # -- ideal orders -> requests ----------------------------------------------------------
    def poll(self, fresh: dict | None = None) -> int:
        """Act on every slot whose ideal order changed.

        `fresh` (single-process mode, where this process's models are the vector's only writers):
        slot -> (writes, IdealOrder fields) the models just decided, taken instead of reading the
        vector, which they write after the order is sent. Other slots then need a look only if
        one of their orders settled (`stale`).
        """
        recheck = fresh is None or self.stale
        self.stale = False
        acted = 0
        for slot in self.slots:
            if fresh and slot in fresh:
                writes, ideal = fresh[slot]
            elif not recheck:
                continue
            else:
                version = self.vector.version(slot)
                if version == self.seen[slot] or version & 1:
                    continue
                got = self.vector.read_bytes(slot)
                if got is None:
                    continue
                writes, ideal = got[0], IDEAL.unpack(got[1])
            self.seen[slot] = 2 * writes
            acted += self.weigh(slot, ideal)
        return acted

    def take(self, slot: int, writes: int, ideal: tuple) -> int:
        """Single-process mode with no slot stale: one model's fresh wish (its write count and
        IdealOrder fields), weighed at once; the model writes the vector after the send."""
        self.seen[slot] = 2 * writes
        return self.weigh(slot, ideal)

    def weigh(self, slot: int, ideal: tuple) -> int:
        """Send what closes the gap between a slot's ideal order (its fields) and its working order."""
        side, tif = ideal[6], ideal[7]
        if tif == IOC:
            return self.new_order(ideal, slot) if side else 0
        working = self.working.get(slot)
        if working is not None:
            if working.state != "open":
                return 0                                  # in flight: decide again once it settles
            if side and (working.side, working.price, working.qty - working.filled) == (side, ideal[8], ideal[9]):
                return 0
            return self.cancel(ideal, working)
        return self.new_order(ideal, slot) if side else 0

    def new_order(self, ideal: tuple, slot: int) -> int:
        """The ideal order as a new order, if the risk limits allow it."""
        (origin, _pub, md_seq, model, venue, instrument, side, tif, price, qty, decided, kernel_rx) = ideal
        account, limits = self.accounts.get(venue) or self.account(venue), self.limits
        signed = qty if side == BUY else -qty
        if not account.connected:
            self.refused["venue disconnected"] += 1
        elif qty > limits.max_order_qty:
            self.refused["order too large"] += 1
        elif account.open_orders >= limits.max_open_orders:
            self.refused["too many open orders"] += 1
        elif abs(account.positions.get(instrument, 0) + signed) > limits.max_position:
            self.refused["position limit"] += 1
        else:
            client_order_id = self.next_id
            self.next_id = client_order_id + 1
            request = (origin, tsc(), client_order_id, md_seq, venue, model, instrument, NEW, side, tif, price, qty,
                       0, decided, kernel_rx)
            if self.direct is not None:
                self.direct(request)                      # single-process mode: the gateway sends it now
            self._publish(request)
            order = Order(client_order_id, venue, instrument, slot, side, price, qty, tif)   # after the send
            self.orders[client_order_id] = order
            if tif != IOC:
                self.working[slot] = order
            account.open_orders += 1
            return 1
        return 0

    def cancel(self, ideal: tuple, order: Order) -> int:
        """Cancel a working order that the slot's ideal order no longer matches."""
        order.state = "cancelling"
        request_id = self.next_id
        self.next_id += 1
        request = (ideal[0], tsc(), request_id, ideal[2], order.venue, ideal[3], order.instrument, CANCEL, order.side,
                   order.time_in_force, order.price, order.qty, order.client_order_id, ideal[10], ideal[11])
        if self.direct is not None:
            self.direct(request)
        self._publish(request)
        return 1

    def _publish(self, request: tuple) -> None:
        """An OrderRequest (its fields, published at request[1]) to the orders queue, its stamp to the
        timing queue. In single-process mode the gateway has already sent it (`direct`)."""
        seq = self.requests.publish(REQUEST.pack(*request))
        if self.timing is not None:
            self.timing.publish_words(REQUEST_TIMING, request[0], request[1], seq)
        self.sent += 1

    # -- account updates from the gateway ------------------------------------------------
    def on_account(self, raw: bytes, seq: int = 0) -> None:
        """Take in one account update (`seq`: its number on the accounts queue)."""
        self._apply(raw)
        if self.record_applies:
            self.timing.publish_words(APPLY_TIMING, int.from_bytes(raw[:8], "little"), tsc(), seq)

    def _apply(self, raw: bytes) -> None:
        (_origin, _pub, client_order_id, _venue_id, venue, kind, side, price, qty, leaves,
         _rx) = ACCOUNT.unpack(raw)
        kind = bytes([kind])
        if kind == b"D":
            self._venue_down(venue)
            return
        if kind == b"U":
            self.account(venue).connected = True
            return
        order = self.orders.get(client_order_id)
        if order is None:
            return
        account = self.account(order.venue)
        if kind == b"A" and order.state == "pending":
            order.state = "open"
        elif kind == b"F":
            order.filled += qty
            signed = qty if order.side == BUY else -qty
            account.positions[order.instrument] += signed
            account.cash -= signed * price
            if leaves == 0:
                self._done(order)
        elif kind in (b"R", b"X"):
            self._done(order)

    def _done(self, order: Order) -> None:
        if order.state == "done":
            return
        order.state = "done"
        del self.orders[order.client_order_id]     # nothing more comes about it: the map stays small
        self.account(order.venue).open_orders -= 1
        if self.working.get(order.slot) is order:
            del self.working[order.slot]
            self.seen[order.slot] = 0             # re-evaluate the slot's latest wish
            self.stale = True

    def _venue_down(self, venue: int) -> None:
        self.account(venue).connected = False
        for order in list(self.orders.values()):
            if order.venue == venue and order.state != "done":
                self._done(order)
