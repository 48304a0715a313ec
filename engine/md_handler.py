"""MarketDataHandler: UDP datagrams in, L2 books updated, MarketUpdates out.

Each datagram is read with its kernel RX stamp and stamped again (TSC) as it
enters the application: that TSC is the origin copied onto everything the
datagram causes. Malformed, short or unknown datagrams, and those for an instrument the
config does not name, are counted by reason and dropped; they never stop the engine.
"""
from __future__ import annotations

from collections import Counter

from engine.book import Books, DatagramError, decode_datagram
from engine.clock import tsc
from engine.messages import MARKET_UPDATE, UPDATE_ORIGIN_TSC, UPDATE_PUBLISH_TSC, timing_word
from engine.net import recv_stamped

MARKET_UPDATE_STRUCT = MARKET_UPDATE.struct
TIMING_WORD = timing_word("md_handler", "market_update")


class MarketDataHandler:
    def __init__(self, feeds, books: Books, updates, timing=None):
        self.feeds = list(feeds)          # non-blocking UDP sockets with RX stamps (engine.net)
        self.books = books
        self.updates = updates            # Producer of MARKET_UPDATE
        self.timing = timing              # Producer of TIMING, optional
        self.dropped: Counter[str] = Counter()
        self.first_app_in = self.last_app_in = 0   # TSC span of the datagrams handled

    @property
    def handled(self) -> int:
        """Datagrams decoded into a book."""
        return sum(book.datagrams for book in self.books.values())

    def sequence_counts(self) -> dict[str, int]:
        """The feeds' sequences, each book following its feed's: datagrams missing (gaps), the
        last seq again (duplicates), and below the last (regressions: late, or a restarted feed)."""
        books = self.books.values()
        return {"md_gaps": sum(b.gaps for b in books), "md_duplicates": sum(b.duplicates for b in books),
                "md_regressions": sum(b.regressions for b in books)}

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
        try:
            return decode_datagram(payload, self.books, kernel_rx_ns, app_in)
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
