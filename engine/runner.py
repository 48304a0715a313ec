"""The Engine: every actor, wired through queues and the ideal-orders vector named
`<name>.md`, `<name>.ideal`, `<name>.orders`, `<name>.accounts`, `<name>.timing`, so observers
(logger, `lab timekeeper`) can attach by name, and the loop that runs them.

Single-process mode (the default) polls every actor in one loop, each datagram going through
the hot path (engine/hot_path.py). On this 2-core machine that wins: each extra spinning
process competes with the venue, the capture and the kernel for the same two cores.
"""
from __future__ import annotations

import select
import signal
import time
from contextlib import contextmanager
from functools import partial

from engine._native import recv_spin
from engine.book import Books
from engine.clock import calibrate, tsc
from engine.config import EngineConfig, config_record
from engine.gateway import OrderGateway, Session
from engine.hot_path import HotPath, HotPathWarmer
from engine.logger import LoggerProcess
from engine.md_handler import MarketDataHandler
from engine.messages import ACCOUNT_UPDATE, IDEAL_ORDER, MARKET_UPDATE, ORDER_REQUEST, TIMING
from engine.models import MODELS
from engine.net import udp_receiver
from engine.overseer import Overseer
from engine.lifeline import die_with_parent_from_environment
from engine.protocol.registry import md_protocol
from engine.queues import Queue, SeqlockVector, sweep_stale_segments
from engine.telemetry import TelemetryRecorder


CLOCK_CHECK_EVERY = 256          # single-process passes between looks at the clock for duration_s
FEED_BATCH = 64                  # datagrams read from one feed per pass (recv_spin takes at most 64)


class Engine:
    """All actors, wired through named queues, polled in one loop."""

    def __init__(self, config: EngineConfig):
        self.config = config
        n = config.name
        cap = config.queue_capacity
        self.queues = [Queue(f"{n}.md", MARKET_UPDATE.dtype, cap), Queue(f"{n}.orders", ORDER_REQUEST.dtype, cap),
                       Queue(f"{n}.accounts", ACCOUNT_UPDATE.dtype, cap), Queue(f"{n}.timing", TIMING.dtype, cap)]
        md_q, orders_q, accounts_q, timing_q = self.queues
        self.ideal = SeqlockVector(f"{n}.ideal", IDEAL_ORDER.dtype, capacity=max(8, len(config.models)))
        timing = timing_q.producer() if config.timing else None

        def tick_for(venue, instrument):
            return config.ticks.get((venue, instrument), 10**6)
        self.books = Books(config.instruments(), tick_for)
        self.feeds = [udp_receiver(*v.feed) for v in config.venues]
        order_feeds = {feed: v.id for feed, v in enumerate(config.venues) if md_protocol(v.md).book_orders}
        self.md = MarketDataHandler(self.feeds, self.books, md_q.producer(), timing, order_feeds)
        self.md_updates = md_q.consumer()
        self.models = []
        for slot, m in enumerate(config.models):
            params = {k: v for k, v in m.items() if k not in ("type", "venue", "instrument")}
            self.models.append(MODELS[m["type"]](slot + 1, m["venue"], m["instrument"], slot, **params))
        self.overseer = Overseer(self.ideal, range(len(self.models)), orders_q.producer(), timing, config.risk,
                                 record_applies=bool(config.logger))
        self.account_updates = accounts_q.consumer()
        self.telemetry = TelemetryRecorder()
        self.gateway = OrderGateway([Session(v.id, *v.gateway, account=v.account, orders=v.orders)
                                     for v in config.venues],
                                    orders_q.consumer(), accounts_q.producer(), self.telemetry, config.strategy)
        self.timing = timing
        if config.mode == "single":
            self.overseer.direct = self.gateway.submit
        self.calibration = None
        self.stopping = False
        # The feeds are read by recv_spin; one epoll watches the venue sessions.
        self.feed_fds = [sock.fileno() for sock in self.feeds]
        self.spin_ticks = 0               # set from the TSC calibration when the run starts
        self.poller = select.epoll()
        self.readers = {}
        self.gateway.on_connect = self._watch_session
        self.gateway.on_disconnect = self._unwatch_session
        self.hot_path = HotPath(self.md, self.models, self.overseer, self.ideal, timing)
        self.on_datagram = self.hot_path.on_datagram
        # each feed's way into the hot path: a WM datagram, or an ITCH packet with its feed's order map
        self.feed_paths = [partial(self.hot_path.on_packet, *self.md.order_maps[feed]) if feed in self.md.order_maps
                           else self.on_datagram for feed in range(len(self.feeds))]
        self.warmer = HotPathWarmer(config, tick_for, self.models, self.books)

    def _watch_session(self, session) -> None:
        self.poller.register(session.sock.fileno(), select.EPOLLIN)   # EPOLLERR is always reported
        self.readers[session.sock.fileno()] = session

    def _unwatch_session(self, session) -> None:
        self.poller.unregister(session.sock.fileno())
        del self.readers[session.sock.fileno()]

    def step(self) -> bool:
        """One single-process pass: the feeds (waiting up to spin_ticks for a datagram), then the
        venue sessions that are ready, then the Overseer if it has news. False if no datagram came."""
        got = self.read_feeds()
        for fd, events in self.poller.poll(0):
            session = self.readers.get(fd)
            if session is not None:
                self.gateway.on_readable(session, bool(events & select.EPOLLERR))
        if self.overseer.stale or self.account_updates.seq != self.gateway.accounts.seq:
            self.run_overseer()
        self.gateway.retry_down()
        return got

    def read_feeds(self) -> bool:
        """The datagrams waiting on the first feed that has any (at most FEED_BATCH, so that the
        venue's replies are not starved by a flood), each straight through to the gateway.
        recv_spin polls the feeds in C for up to spin_ticks; one recvmmsg takes the batch, and
        each datagram's app_in is stamped when its turn comes."""
        got = recv_spin(self.feed_fds, FEED_BATCH, self.spin_ticks)
        if got is None:
            return False
        on_datagram = self.feed_paths[got[0]]
        for payload, kernel_rx_ns in got[1]:
            on_datagram(payload, kernel_rx_ns, tsc())
        return True

    def run_models(self) -> int:
        """Processes mode: every waiting MarketUpdate through every trade model. Returns updates taken."""
        done = 0
        while (update := self.md_updates.poll_bytes()) is not None:
            for model in self.models:
                model.on_update(update, self.ideal, self.timing)
            done += 1
        return done

    def run_overseer(self) -> int:
        """The Overseer's pass: ideal orders first, then the account updates waiting."""
        done = self.overseer.poll()
        while (account := self.account_updates.poll_bytes()) is not None:
            self.overseer.on_account(account, self.account_updates.seq - 1)
            done += 1
        return done

    def run(self) -> dict:
        """Run until the config's limits, a venue's failure, or SIGINT/SIGTERM; the telemetry and the
        log are written either way."""
        with self._stopped_by_signals():
            if not self.config.logger:
                return self._run()
            logger = LoggerProcess(self.config.name, self.config.logger, config_record(self.config))
            try:
                summary = self._run()
            finally:
                prefix = len(self.config.name) + 1
                logged = logger.stop({q.name[prefix:]: q.head() for q in self.queues}, self.calibration)
            return {**summary, "logger": logged}

    @contextmanager
    def _stopped_by_signals(self):
        """SIGINT and SIGTERM set `stopping`, whatever this process inherited (a script's background
        job starts with SIGINT ignored). A second signal while stopping changes nothing."""
        def stop(_signum, _frame) -> None:
            self.stopping = True
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> dict:
        self.calibration = calibrate(duration_s=0.1, samples=200)
        if self.config.mode == "processes":
            from engine.processes import run_processes
            return run_processes(self, self.config.wait, self.config.cpus)
        self.gateway.connect_all()
        limit, max_orders, counts = self.config.duration_s, self.config.max_orders, self.gateway.counts
        deadline = None if limit is None else time.monotonic() + limit
        self.spin_ticks = self.config.spin_us * self.calibration.frequency_hz // 10**6
        passes, idle, warm_every, warm = 0, 0, self.config.warm_every, self.warmer.run
        try:
            while not self.stopping and not self.gateway.failed:
                passes += 1
                if self.step():
                    idle = 0
                elif warm_every:
                    idle += 1
                    if idle % warm_every == 0:
                        warm()
                if deadline is not None and passes % CLOCK_CHECK_EVERY == 0 and time.monotonic() >= deadline:
                    break
                if max_orders is not None and counts["orders"] >= max_orders:
                    break
        finally:
            self.finish()
        return self.summary()

    def finish(self) -> None:
        deadline = time.monotonic() + 0.2                # let the last TX stamps come back
        while self.telemetry.pending and time.monotonic() < deadline:
            self.gateway.poll_sockets()
        self.gateway.close()
        if self.config.telemetry and self.calibration is not None:
            self.telemetry.save(self.config.telemetry, self.calibration,
                                {"strategy": self.config.strategy, "summary": self.summary()})

    def summary(self) -> dict:
        span_ns = (self.calibration.to_ns(self.md.last_app_in) - self.calibration.to_ns(self.md.first_app_in)
                   if self.calibration and self.md.handled > 1 else 0)
        return {"md_handled": self.md.handled, "md_dropped": self.md.drop_counts(), **self.md.sequence_counts(),
                "md_span_ns": span_ns,
                "orders": self.gateway.counts["orders"], "gateway": dict(self.gateway.counts),
                "refused": dict(self.overseer.refused), "venue_failed": self.gateway.failed,
                "positions": {v: dict(a.positions) for v, a in self.overseer.accounts.items()}}

    def close(self) -> None:
        self.poller.close()
        for sock in self.feeds:
            sock.close()
        for q in self.queues:
            q.close()
        self.ideal.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_engine_process() -> None:
    """What `python -m engine` and `lab engine` do first. Until Engine.run takes them as a stop,
    SIGINT and SIGTERM interrupt (KeyboardInterrupt), whatever dispositions were inherited. The
    engine dies with a parent that asked for it (WIRELAB_PARENT_PID) by SIGTERM, so it still
    removes its shared memory. Segments that engines killed outright left behind are swept."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    die_with_parent_from_environment(signal.SIGTERM)
    sweep_stale_segments()
