"""Run the engine from a TOML config: `python -m engine --config FILE`.

The actors talk only through queues and the ideal-orders vector, named
`<name>.md`, `<name>.ideal`, `<name>.orders`, `<name>.accounts`, `<name>.timing`,
so observers (logger, `lab timekeeper`) can attach by name.

Single-process mode (the default) polls every actor in one loop. On this
2-core machine that wins: each extra spinning process competes with the venue,
the capture and the kernel for the same two cores. Its hot path hands each
actor's output straight to the next (datagram -> book -> models of that
instrument -> Overseer -> gateway send) and writes the queues and the vector
after the send, so the logger, replay and the timekeeper still see every message.
"""
from __future__ import annotations

import json
import select
import signal
import time
import tomllib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from engine._native import recv_spin
from engine.book import Books
from engine.clock import calibrate, tsc
from engine.gateway import STRATEGIES, OrderGateway, Session
from engine.lifeline import die_with_parent_from_environment
from engine.logger import LoggerProcess
from engine.md_handler import MarketDataHandler
from engine.messages import ACCOUNT_UPDATE, IDEAL_ORDER, MARKET_UPDATE, ORDER_REQUEST, TIMING
from engine.models import MODELS
from engine.net import udp_receiver
from engine.overseer import Overseer, RiskLimits
from engine.protocol import md
from engine.protocol.registry import DEFAULT_ORDERS, order_protocol_names
from engine.queues import Queue, QueueError, SeqlockVector, sweep_stale_segments
from engine.telemetry import TelemetryRecorder


CLOCK_CHECK_EVERY = 256          # single-process passes between looks at the clock for duration_s
FEED_BATCH = 64                  # datagrams read from one feed per pass (recv_spin takes at most 64)


class ConfigError(ValueError):
    """The engine config cannot be used; the message names the key."""


@dataclass
class VenueConfig:
    id: int
    feed: tuple[str, int]
    gateway: tuple[str, int]
    account: int = 1
    orders: str = DEFAULT_ORDERS                         # the order protocol's name


@dataclass
class EngineConfig:
    name: str = "wirelab-engine"
    strategy: str = "none"
    mode: str = "single"                                 # or "processes" (engine/processes.py)
    wait: str = "yield"                                  # processes mode: "spin" or "yield"
    cpus: list[int] | None = None                        # processes mode: pin round robin
    timing: bool = True                                  # publish every stage to the timing queue
    spin_us: int = 20                                    # single mode: a pass's wait for datagrams, spinning in C
    warm_every: int = 1                                  # single mode: idle passes between hot-path warm-ups (0: off)
    telemetry: str | None = None
    logger: str | None = None                            # persistence log: a logger process records every queue
    duration_s: float | None = None
    max_orders: int | None = None
    venues: list[VenueConfig] = field(default_factory=list)
    ticks: dict = field(default_factory=dict)            # (venue, instrument) -> tick
    models: list[dict] = field(default_factory=list)
    risk: RiskLimits = field(default_factory=RiskLimits)
    queue_capacity: int = 1 << 14

    def instruments(self) -> set[tuple[int, int]]:
        """(venue, instrument) of every instrument the config names, in [[instruments]] or a model."""
        return set(self.ticks) | {(m["venue"], m["instrument"]) for m in self.models}


def _address(value, key) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    host, port = value.rsplit(":", 1)
    if not port.isdigit():
        raise ConfigError(f"{key}: port must be a number, got {port!r}")
    return host, int(port)


def parse_config(text: str) -> EngineConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"toml: {exc}") from None
    engine = data.get("engine", {})
    config = EngineConfig(
        name=engine.get("name", "wirelab-engine"), strategy=engine.get("strategy", "none"),
        telemetry=engine.get("telemetry"), duration_s=engine.get("duration_s"),
        max_orders=engine.get("max_orders"), mode=engine.get("mode", "single"),
        wait=engine.get("wait", "yield"), cpus=engine.get("cpus"), timing=engine.get("timing", True),
        logger=engine.get("logger"), spin_us=engine.get("spin_us", 20), warm_every=engine.get("warm_every", 1))
    if config.mode not in ("single", "processes"):
        raise ConfigError(f"engine.mode: {config.mode!r} is not single or processes")
    if config.wait not in ("spin", "yield"):
        raise ConfigError(f"engine.wait: {config.wait!r} is not spin or yield")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"engine.strategy: {config.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for key, unit in (("spin_us", "microseconds"), ("warm_every", "passes")):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"engine.{key}: expected a whole number of {unit} >= 0, got {value!r}")
    if config.logger is not None and (not isinstance(config.logger, str) or not config.logger):
        raise ConfigError(f"engine.logger: expected a file path, got {config.logger!r}")
    if config.logger and not config.timing:
        raise ConfigError("engine.logger: needs engine.timing = true (replay orders its inputs by the timing records)")
    for i, v in enumerate(data.get("venues", [])):
        if "id" not in v:
            raise ConfigError(f"venues[{i}].id: missing")
        if v.get("orders", DEFAULT_ORDERS) not in order_protocol_names():
            raise ConfigError(f"venues[{i}].orders: {v.get('orders')!r} is not one of "
                              f"{', '.join(order_protocol_names())}")
        config.venues.append(VenueConfig(v["id"], _address(v.get("feed"), f"venues[{i}].feed"),
                                         _address(v.get("gateway"), f"venues[{i}].gateway"), v.get("account", 1),
                                         v.get("orders", DEFAULT_ORDERS)))
    if not config.venues:
        raise ConfigError("venues: at least one [[venues]] is needed")
    for i, inst in enumerate(data.get("instruments", [])):
        config.ticks[(inst["venue"], inst["id"])] = inst.get("tick", 10**6)
    for i, m in enumerate(data.get("models", [])):
        if m.get("type") not in MODELS:
            raise ConfigError(f"models[{i}].type: {m.get('type')!r} is not one of {', '.join(MODELS)}")
        config.models.append(dict(m))
    if not config.models:
        raise ConfigError("models: at least one [[models]] is needed")
    risk = data.get("risk", {})
    config.risk = RiskLimits(**{k: risk[k] for k in ("max_position", "max_open_orders", "max_order_qty")
                                if k in risk})
    return config


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
        self.md = MarketDataHandler(self.feeds, self.books, md_q.producer(), timing)
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
        on_datagram = self.on_datagram
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
        return {"md_handled": self.md.handled, "md_dropped": dict(self.md.dropped), **self.md.sequence_counts(),
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

    def decide(self, update: tuple) -> dict:
        """The models of the update's instrument, in slot order; each fresh wish goes to the Overseer
        at once, which sends through the gateway before the next model runs (as separate actors
        would: a taker's order does not wait for a slower model). When a slot is stale the
        Overseer takes the wishes together, with its recheck of every slot.
        Returns slot -> (writes, IdealOrder fields) of the models that changed their wish."""
        fresh = {}
        overseer = self.overseer
        stale = overseer.stale            # only account updates set it: constant during this loop
        for model in self.models_of.get((update[5], update[6]), ()):
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


def config_record(config: EngineConfig) -> dict:
    """The config as JSON-able data, for the persistence log (replay builds its actors from it)."""
    record = asdict(config)
    record["ticks"] = [[venue, instrument, tick] for (venue, instrument), tick in config.ticks.items()]
    return record


def start_engine_process() -> None:
    """What `python -m engine` and `lab engine` do first. Until Engine.run takes them as a stop,
    SIGINT and SIGTERM interrupt (KeyboardInterrupt), whatever dispositions were inherited. The
    engine dies with a parent that asked for it (WIRELAB_PARENT_PID) by SIGTERM, so it still
    removes its shared memory. Segments that engines killed outright left behind are swept."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    die_with_parent_from_environment(signal.SIGTERM)
    sweep_stale_segments()


def main(argv=None) -> int:
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run the wirelab trading engine.")
    parser.add_argument("--config", required=True, help="engine TOML config")
    args = parser.parse_args(argv)
    try:
        start_engine_process()
        with open(args.config, "rb") as f:
            config = parse_config(f.read().decode("utf-8"))
        with Engine(config) as engine:
            print(json.dumps(engine.run(), indent=2))
    except (OSError, ConfigError, UnicodeDecodeError, QueueError) as exc:   # LoggerError is an OSError
        print(f"engine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("engine: stopped by a signal before it could run", file=sys.stderr)
        return 130
    return 0
