"""Single-process mode's hot path and its warmer. Each actor's output goes straight to the next
(datagram -> book -> models of that instrument -> Overseer -> gateway send), and the queues and
the vector are written after the send, so the logger, replay and the timekeeper still see every
message. Between datagrams the warmer runs the same code to keep it in cache.
"""
from __future__ import annotations

from engine.book import Books
from engine.clock import tsc
from engine.config import EngineConfig
from engine.gateway import OrderGateway, Session
from engine.md_handler import MarketDataHandler
from engine.messages import UPDATE_INSTRUMENT, UPDATE_VENUE
from engine.overseer import Overseer
from engine.protocol import md
from engine.telemetry import TelemetryRecorder


class HotPath:
    """Single-process mode's path for one datagram: book -> the models of its instrument ->
    Overseer -> gateway send. The queue and vector writes follow the send."""

    def __init__(self, md_handler: MarketDataHandler, models: list, overseer: Overseer, ideal, timing):
        self.md, self.models, self.overseer, self.ideal, self.timing = md_handler, models, overseer, ideal, timing
        self.models_of: dict[tuple[int, int], list] = {}          # (venue, instrument) -> its models
        for model in models:
            self.models_of.setdefault((model.venue, model.instrument), []).append(model)

    def on_datagram(self, payload, kernel_rx_ns: int, app_in: int) -> None:
        update = self.md.decode(payload, kernel_rx_ns, app_in)
        if update is not None:
            self.record(update, self.decide(update))

    def on_packet(self, venue: int, orders, payload, kernel_rx_ns: int, app_in: int) -> None:
        """An ITCH packet (`orders`: its feed's order map): one MarketUpdate per instrument it changed, each
        decided on in turn; the queue and vector writes follow every send."""
        updates = self.md.decode_packet(venue, orders, payload, kernel_rx_ns, app_in)
        if updates:
            decided = [(update, self.decide(update)) for update in updates]
            for update, fresh in decided:
                self.record(update, fresh)

    def decide(self, update: tuple, venue_at: int = UPDATE_VENUE, instrument_at: int = UPDATE_INSTRUMENT) -> dict:
        """The models of the update's instrument, in slot order; each fresh wish goes to the Overseer
        at once, which sends through the gateway before the next model runs (as separate actors
        would: a taker's order does not wait for a slower model). When a slot is stale the
        Overseer takes the wishes together, with its recheck of every slot.
        Returns slot -> (writes, IdealOrder fields) of the models that changed their wish.
        The field positions are defaults so that they are read as locals, not globals."""
        fresh = {}
        overseer = self.overseer
        stale = overseer.stale            # only account updates set it: constant during this loop
        for model in self.models_of.get((update[venue_at], update[instrument_at]), ()):
            ideal = model.react(update)
            if ideal is not None:
                fresh[model.slot] = (model.writes, ideal)
                if not stale:
                    overseer.take(model.slot, model.writes, ideal)
        if stale and fresh:
            overseer.poll(fresh)
        return fresh

    def record(self, update: tuple, fresh: dict) -> None:
        """After the send: the MarketUpdate to the md queue, the ideal orders to the vector."""
        self.md.publish(update)
        for slot, (_writes, ideal) in fresh.items():
            self.models[slot].publish(ideal, self.ideal, self.timing)


class _Discard:
    """Where the shadows' queue and vector writes go."""

    def publish(self, payload) -> int:
        return 0

    def publish_words(self, *words) -> int:
        return 0

    def write(self, slot, payload) -> None:
        pass


class _Sent(Exception):
    """Raised by the warm-ups' sockets: a warm-up ends where the bytes would leave."""


class _StopAtSend:
    def send(self, data):
        raise _Sent


class HotPathWarmer:
    """Cache warming, as trading engines do it: between datagrams the idle loop's syscalls evict the
    hot path's code, data and branch history. So after every `engine.warm_every` idle passes the
    same HotPath code runs on a lopsided synthetic datagram, up to the first send: through a book of
    its own, the real models (their data is as cold as the code; `last` and `writes` are put back
    after, and decide() is pure), and an Overseer and gateway of the real types (a shadow of another
    type would unsettle the interpreter's specialisations on the shared code), whose socket ends the
    warm-up by raising at the send. So none of the bookkeeping after a send runs, nothing is left to
    undo, and the idle pass stays short. Turns rotate over each instrument's models, each taking its
    turn at the head of the line, so that every model's send path is warmed, not only the first's.
    The real books are only read; the real orders, sockets and queues are never touched."""

    def __init__(self, config: EngineConfig, tick_for, models: list, books: Books):
        discard = _Discard()
        timing = discard if config.timing else None
        self.gateway = OrderGateway([Session(v.id, *v.gateway, account=v.account, orders=v.orders)
                                     for v in config.venues], None, None, TelemetryRecorder(), config.strategy)
        self.overseer = Overseer(discard, range(len(models)), discard, timing, config.risk)
        self.overseer.direct = self.gateway.submit
        for session in self.gateway.sessions.values():
            session.sock = _StopAtSend()
            session.primed = 0 if config.strategy == "tcp-prefix" else None   # as if a prefix were out
        self.path = HotPath(MarketDataHandler([], Books(config.instruments(), tick_for), discard, timing), models,
                            self.overseer, discard, timing)
        self.books = books
        self.turns = []                   # (instrument's key, its datagram, the models from one at the head on)
        for (venue, instrument), line in self.path.models_of.items():
            tick = tick_for(venue, instrument)
            payload = md.MdDatagram(venue, 0, instrument, 0, (
                md.L2Update(md.BID, md.SET, 1000 * tick, 900), md.L2Update(md.ASK, md.SET, 1001 * tick, 100))).encode()
            self.turns += [((venue, instrument), payload, {(venue, instrument): line[head:]})
                           for head in range(len(line))]
        self.turn = 0
        self.sends = 0                    # warm-ups that reached a send

    def run(self) -> None:
        self.turn = (self.turn + 1) % len(self.turns)
        key, payload, models_of = self.turns[self.turn]
        path = self.path
        book = self.books.get(key)                # get: no book is made for an instrument not seen yet
        if book is not None:
            book.top()
        path.models_of = models_of
        states = [(model, model.last, model.writes) for model in models_of[key]]
        try:
            path.decide(path.md.decode(payload, 0, tsc()))
        except _Sent:
            self.sends += 1
        for model, last, writes in states:
            model.last, model.writes = last, writes

