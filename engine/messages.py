"""The engine's internal messages: what flows through its queues and vectors.

Every message starts with `origin_tsc` (the TSC stamp of the market data or
venue event that caused it, copied onto everything it causes) and
`publish_tsc` (when its publisher handed it on: in processes mode the queue
write; in single-process mode the direct hand-over to the next actor, the
queue write following once the order is sent). Layouts are data, as in
engine.protocol; a layout's `struct` packs them on the hot path.
"""
from __future__ import annotations

from engine.protocol.layout import Field, Layout

BUY, SELL = 1, 2                 # sides, as FIX Side (54) codes them
DAY, IOC = 0, 3                  # time in force, as FIX TimeInForce (59) codes them


def _stamps() -> list[Field]:
    return [Field("origin_tsc", 0, "<u8", "TSC stamp of the event that caused this message"),
            Field("publish_tsc", 8, "<u8", "TSC stamp when this message was published")]


MARKET_UPDATE = Layout("MarketUpdate", 96, _stamps() + [
    Field("kernel_rx_ns", 16, "<i8", "kernel RX stamp of the datagram, ns since the epoch"),
    Field("md_seq", 24, "<u8", "seq of the MD datagram"),
    Field("send_ts_ns", 32, "<i8", "the feed's own send stamp"),
    Field("venue", 40, "<u2", "venue id"),
    Field("instrument", 44, "<u4", "instrument id"),
    Field("bid_price", 48, "<i8", "best bid after the update (0 if none)"),
    Field("bid_qty", 56, "<i8", "quantity at the best bid"),
    Field("ask_price", 64, "<i8", "best ask after the update (0 if none)"),
    Field("ask_qty", 72, "<i8", "quantity at the best ask"),
    Field("trade_price", 80, "<i8", "last trade in the datagram (0 if none)"),
    Field("trade_qty", 88, "<i8", "its quantity"),
])
# Where fields sit in a MarketUpdate tuple (engine._book.decode returns them in the layout's order).
UPDATE_ORIGIN_TSC, UPDATE_PUBLISH_TSC, UPDATE_VENUE, UPDATE_INSTRUMENT = (
    MARKET_UPDATE.dtype.names.index(name) for name in ("origin_tsc", "publish_tsc", "venue", "instrument"))

IDEAL_ORDER = Layout("IdealOrder", 72, _stamps() + [
    Field("md_seq", 16, "<u8", "MD seq the model last decided on"),
    Field("model", 24, "<u2", "trade model id"),
    Field("venue", 26, "<u2", "venue id"),
    Field("instrument", 28, "<u4", "instrument id"),
    Field("side", 32, "u1", "1 buy, 2 sell, 0 no order wanted"),
    Field("time_in_force", 33, "u1", "0 day, 3 IOC"),
    Field("price", 40, "<i8", "limit price"),
    Field("qty", 48, "<i8", "quantity"),
    Field("decision_tsc", 56, "<u8", "TSC stamp when the model decided"),
    Field("kernel_rx_ns", 64, "<i8", "kernel RX stamp of the triggering datagram (copied like the origin)"),
])

ORDER_REQUEST = Layout("OrderRequest", 88, _stamps() + [
    Field("client_order_id", 16, "<u8", "id of the new order, or of the cancel request"),
    Field("md_seq", 24, "<u8", "MD seq that triggered it"),
    Field("venue", 32, "<u2", "venue id"),
    Field("model", 34, "<u2", "trade model id"),
    Field("instrument", 36, "<u4", "instrument id"),
    Field("kind", 40, "u1", 'b"N" new order, b"C" cancel'),
    Field("side", 41, "u1", "1 buy, 2 sell"),
    Field("time_in_force", 42, "u1", "0 day, 3 IOC"),
    Field("price", 48, "<i8", "limit price"),
    Field("qty", 56, "<i8", "quantity"),
    Field("target_id", 64, "<u8", "for a cancel: the client_order_id to cancel"),
    Field("decision_tsc", 72, "<u8", "when the trade model decided"),
    Field("kernel_rx_ns", 80, "<i8", "kernel RX stamp of the triggering datagram"),
])

ACCOUNT_UPDATE = Layout("AccountUpdate", 72, _stamps() + [
    Field("client_order_id", 16, "<u8", "the order concerned"),
    Field("venue_order_id", 24, "<u8", "the venue's id"),
    Field("venue", 32, "<u2", "venue id"),
    Field("kind", 34, "u1", 'b"A" ack, b"F" fill, b"R" reject, b"X" cancelled, b"D" venue down, b"U" venue up'),
    Field("side", 35, "u1", "1 buy, 2 sell"),
    Field("price", 40, "<i8", "execution price (fills)"),
    Field("qty", 48, "<i8", "filled quantity (fills)"),
    Field("leaves_qty", 56, "<i8", "quantity still open"),
    Field("kernel_rx_ns", 64, "<i8", "kernel RX stamp of the venue's message"),
])

TIMING = Layout("Timing", 32, [
    Field("publisher", 0, "<u2", "actor id (engine.messages.ACTORS)"),
    Field("kind", 2, "<u2", "message kind published (engine.messages.KINDS)"),
    Field("origin_tsc", 8, "<u8", "origin stamp of the published message"),
    Field("publish_tsc", 16, "<u8", "publish stamp"),
    Field("seq", 24, "<u8", "sequence number on its queue"),
])

ACTORS = {"md_handler": 1, "trade_model": 2, "overseer": 3, "gateway": 4}
KINDS = {"market_update": 1, "ideal_order": 2, "order_request": 3, "order_sent": 4, "account_update": 5}

def timing_word(actor: str, kind: str) -> int:
    """A Timing record's first 64-bit word (publisher, kind, zero padding): the timing queue's
    producers write records with Producer.publish_words(word, origin, publish, seq)."""
    return ACTORS[actor] | KINDS[kind] << 16


