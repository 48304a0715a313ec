"""MarketDataHandler: UDP datagrams in, books updated, MarketUpdates out.

Each datagram is read with its kernel RX stamp and stamped again (TSC) as it
enters the application: that TSC is the origin copied onto everything the
datagram causes. Malformed, short or unknown datagrams, and those for an instrument the
config does not name, are counted by reason and dropped; they never stop the engine.

A WM feed's datagram is one MarketUpdate (decode_datagram). An ITCH feed's packet holds many
messages, each changing live orders of an L3 book (decode_itch, with the feed's own order map):
it gives one MarketUpdate per instrument whose top of book moved or that traded. Its bad
messages are counted by reason in the order map and dropped.
"""
from __future__ import annotations

from collections import Counter
from functools import partial

from engine.book import Books, DatagramError, ItchOrders, decode_datagram, decode_itch
from engine.clock import tsc
from engine.messages import MARKET_UPDATE, UPDATE_ORIGIN_TSC, UPDATE_PUBLISH_TSC, timing_word
from engine.net import recv_stamped

MARKET_UPDATE_STRUCT = MARKET_UPDATE.struct
TIMING_WORD = timing_word("md_handler", "market_update")
MAX_ORDERS_PER_FEED = 1 << 20     # live orders an ITCH feed's order map holds; an add past them is dropped


class MarketDataHandler:
    def __init__(self, feeds, books: Books, updates, timing=None, order_feeds=None):
        self.feeds = list(feeds)          # non-blocking UDP sockets with RX stamps (engine.net)
        self.books = books
        self.updates = updates            # Producer of MARKET_UPDATE
        self.timing = timing              # Producer of TIMING, optional
        self.dropped: Counter[str] = Counter()
        self.first_app_in = self.last_app_in = 0   # TSC span of the datagrams handled
        # the feeds that carry orders (ITCH), {index into feeds: venue}: (venue, its order map) each
        self.order_maps = {feed: (venue, ItchOrders(MAX_ORDERS_PER_FEED))
                           for feed, venue in (order_feeds or {}).items()}
        self.handlers = [partial(self.handle_packet, *self.order_maps[feed]) if feed in self.order_maps else self.handle
                         for feed in range(len(self.feeds))]   # each feed's handle(payload, kernel_rx_ns, app_in)

    @property
    def handled(self) -> int:
        """Datagrams decoded into a book (for an ITCH feed, packets with messages)."""
        return (sum(book.datagrams for book in self.books.values())
                + sum(orders.packets for _venue, orders in self.order_maps.values()))

    def sequence_counts(self) -> dict[str, int]:
        """The feeds' sequences, each WM book following its feed's and each ITCH order map its feed's
        messages: seqs missing (gaps), the last datagram's seq again (duplicates), and below the next
        expected one (regressions: late, or a restarted feed)."""
        followers = [*self.books.values(), *(orders for _venue, orders in self.order_maps.values())]
        return {"md_gaps": sum(f.gaps for f in followers), "md_duplicates": sum(f.duplicates for f in followers),
                "md_regressions": sum(f.regressions for f in followers)}

    def drop_counts(self) -> dict[str, int]:
        """What was dropped, by reason: datagrams (here) and ITCH messages (in their order maps)."""
        counts = Counter(self.dropped)
        for _venue, orders in self.order_maps.values():
            counts.update(orders.dropped)
        return dict(counts)

    def poll(self) -> int:
        """Read at most one datagram per feed. Returns how many were handled."""
        return sum(self.read(sock, handle) for sock, handle in zip(self.feeds, self.handlers))

    def read(self, sock, handle) -> int:
        """Handle one datagram waiting on `sock`, if any, with its feed's `handle`."""
        got = recv_stamped(sock)
        if got is None:
            return 0
        return handle(got[0], got[1] or 0, tsc())

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
        try:
            return decode_datagram(payload, self.books, kernel_rx_ns, app_in)
        except DatagramError as exc:
            self.dropped[exc.args[0]] += 1
            return None

    def handle_packet(self, venue: int, orders: ItchOrders, payload: bytes, kernel_rx_ns: int, app_in: int) -> int:
        """Decode one ITCH packet and publish its MarketUpdates. Returns 1, or 0 if it was dropped."""
        updates = self.decode_packet(venue, orders, payload, kernel_rx_ns, app_in)
        if updates is None:
            return 0
        for update in updates:
            self.publish(update)
        return 1

    def decode_packet(self, venue: int, orders: ItchOrders, payload, kernel_rx_ns: int, app_in: int) -> tuple | None:
        """Apply one ITCH packet to the L3 book of its venue: the MarketUpdates' fields, in order of first change,
        or None if it was not MoldUDP64 at all. Its bad messages are counted in `orders` and dropped."""
        try:
            return decode_itch(payload, self.books, orders, venue, kernel_rx_ns, app_in)
        except DatagramError as exc:
            self.dropped[exc.args[0]] += 1
            return None

    def publish(self, update: tuple, origin_at: int = UPDATE_ORIGIN_TSC, publish_at: int = UPDATE_PUBLISH_TSC) -> None:
        """Put a decoded MarketUpdate on the md queue (and its stamp on the timing queue).
        The field positions are defaults so that they are read as locals, not globals."""
        app_in = update[origin_at]
        message_seq = self.updates.publish(MARKET_UPDATE_STRUCT.pack(*update))
        if self.timing is not None:
            self.timing.publish_words(TIMING_WORD, app_in, update[publish_at], message_seq)
        if not self.first_app_in:
            self.first_app_in = app_in
        self.last_app_in = app_in
