"""MarketDataHandler: UDP datagrams in, L2 books updated, MarketUpdates out.

Each datagram is read with its kernel RX stamp and stamped again (TSC) as it
enters the application: that TSC is the origin copied onto everything the
datagram causes. Malformed, short or unknown datagrams are counted by reason
and dropped; they never stop the engine.
"""
from __future__ import annotations

from collections import Counter

from engine.book import BookError, Books
from engine.clock import tsc
from engine.messages import ACTORS, KINDS, MARKET_UPDATE, TIMING, struct_of
from engine.net import recv_stamped
from engine.protocol import md

HEADER = struct_of(md.HEADER)
TRADE = struct_of(md.TRADE)
HEADER_SIZE, UPDATE_SIZE, TRADE_SIZE = md.HEADER_SIZE, md.UPDATE_SIZE, md.TRADE_SIZE
MAGIC, VERSION, MSG_TYPE_MD = md.MAGIC, md.VERSION, md.MSG_TYPE_MD
MARKET_UPDATE_STRUCT = struct_of(MARKET_UPDATE)
TIMING_STRUCT = struct_of(TIMING)
PUBLISHER = ACTORS["md_handler"]
KIND = KINDS["market_update"]


class MarketDataHandler:
    def __init__(self, feeds, books: Books, updates, timing=None):
        self.feeds = list(feeds)          # non-blocking UDP sockets with RX stamps (engine.net)
        self.books = books
        self.updates = updates            # Producer of MARKET_UPDATE
        self.timing = timing              # Producer of TIMING, optional
        self.dropped: Counter[str] = Counter()
        self.handled = 0
        self.last_seq: dict[tuple[int, int], int] = {}
        self.gaps = 0                     # datagrams missing from a feed's sequence
        self.first_app_in = self.last_app_in = 0   # TSC span of the datagrams handled

    def poll(self) -> int:
        """Read at most one datagram per feed. Returns how many were handled."""
        return sum(self.read(sock) for sock in self.feeds)

    def read(self, sock) -> int:
        """Handle one datagram waiting on `sock`, if any."""
        got = recv_stamped(sock)
        if got is None:
            return 0
        return self.handle(got[0], got[1] or 0, tsc())

    def handle(self, payload: bytes, kernel_rx_ns: int, app_in: int) -> int:
        """Decode one datagram and publish its MarketUpdate. Returns 1, or 0 if it was dropped."""
        update = self.decode(payload, kernel_rx_ns, app_in)
        if update is None:
            return 0
        self.publish(update)
        return 1

    def decode(self, payload, kernel_rx_ns: int, app_in: int) -> tuple | None:
        """Apply one datagram to its book: the MarketUpdate's fields, or None if it was dropped.

        The publish stamp is taken here, where the update is handed on; single-process mode
        hands it to the models directly and writes it to the queue after the order is sent.
        """
        if len(payload) < HEADER_SIZE:
            return self._drop("short datagram")
        (magic, version, msg_type, length, venue, seq, instrument, n_updates, n_trades,
         send_ts) = HEADER.unpack_from(payload)
        if magic != MAGIC:
            return self._drop("unknown magic")
        if version != VERSION or msg_type != MSG_TYPE_MD:
            return self._drop("unknown version or type")
        if length != len(payload) or HEADER_SIZE + UPDATE_SIZE * n_updates + TRADE_SIZE * n_trades != length:
            return self._drop("length mismatch")
        book = self.books[venue, instrument]
        try:
            bid_price, bid_qty, ask_price, ask_qty = book.apply(payload, n_updates)   # unpacked: cheaper than *
        except BookError:
            return self._drop("bad book update")
        trade_price = trade_qty = 0
        if n_trades:
            trade_price, trade_qty, _ = TRADE.unpack_from(payload, length - TRADE_SIZE)
        return (app_in, tsc(), kernel_rx_ns, seq, send_ts, venue, instrument, bid_price, bid_qty, ask_price, ask_qty,
                trade_price, trade_qty)

    def publish(self, update: tuple) -> None:
        """Put a decoded MarketUpdate on the md queue (and its stamp on the timing queue), and count it."""
        app_in, published, _rx, seq, _send, venue, instrument = update[:7]
        message_seq = self.updates.publish(MARKET_UPDATE_STRUCT.pack(*update))
        if self.timing is not None:
            self.timing.publish(TIMING_STRUCT.pack(PUBLISHER, KIND, app_in, published, message_seq))
        feed = (venue, instrument)
        previous = self.last_seq.get(feed)
        if previous is not None and seq > previous + 1:
            self.gaps += seq - previous - 1
        self.last_seq[feed] = seq
        self.handled += 1
        if not self.first_app_in:
            self.first_app_in = app_in
        self.last_app_in = app_in

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
