"""`lab run`: the real engine, driven over loopback through a simulated network.

One experiment, in order:

1. The scenario's MD path says when each datagram's last bit reaches the host NIC
   (exchange departures at `rate`, queueing included).
2. The loopback capture starts (a child process: AF_PACKET on `lo`, which needs
   CAP_NET_RAW; without it, `auto` rebuilds the capture from the sockets' own stamps,
   lab.run.sockets), then the venues (order gateway + matching engine each), then the
   engine (`python -m engine`, with telemetry and its persistence log).
3. Once the engine has connected to every venue, the feed puts each datagram onto
   loopback at its instant; the venue loop serves the gateways while it waits.
4. The engine is stopped with SIGTERM (it writes telemetry and its log), the capture is
   stopped, and the loopback frames become the run's hardware-style pcapng
   (lab.run.taps), with the run info (scenario, host latencies, the lab's clock
   samples) in its section comment.

Whatever happens, everything started is stopped: processes, sockets, shared memory. Killed
outright (SIGKILL), the runner cannot stop anything: its children die with it
(engine.lifeline), and the next run sweeps what is left (sweep_stale_runs).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from engine.clock import paired_sample
from engine.gateway import STRATEGIES as REAL_STRATEGIES      # what the real engine's gateway sends
from engine.lifeline import child_environment, die_with_parent, is_alive
from engine.net import recv_stamped, udp_receiver
from engine.protocol.registry import DEFAULT_MD, DEFAULT_ORDERS, md_protocol, md_protocol_names, order_protocol
from engine.queues import sweep_stale_segments
from engine.telemetry import read_telemetry
from lab.capture import open_capture
from lab.capture.live import LiveCapture
from lab.errors import LabError
from lab.run.feeds import feed_source
from lab.run.runinfo import run_info_comment
from lab.run.sockets import rebuild
from lab.run.taps import build_taps, write_taps
from lab.venue.feed import FeedPublisher
from lab.venue.gateway import OrderGateway
from lab.venue.matching import MatchingEngine, queue_model
from simulator.errors import SimulatorError
from simulator.scenario import load_scenario, scenario_text

CAPTURES = ("auto", "packet", "sockets")
MODELS = {   # the engine's trade models lab run can start, with their parameters
    "imbalance-taker": ["qty = 1", "threshold_pct = 70"],
    "join-the-touch": ["qty = 1", "max_spread = 2000000"],
}
INSTRUMENT = 7
TICK = 1_000_000
SEQ_STRIDE = 10**9               # venue v's feed counts from v * SEQ_STRIDE + 1: one seq space for the lab
CONNECT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
DRAIN_S = 0.3                    # after the last datagram: the last orders and replies settle
START_LEAD_NS = 100_000_000      # the first delivery, after the engine is connected
CLOCK_SAMPLES = 100
PS_PER_NS = 1000
MAX_RUN_PACKETS = 1 << 26          # read in one batch: a run's capture is far smaller
RUN_FOLDER_PREFIX = "wirelab-run-"   # + the runner's pid + "-": its temporary folder


class RunError(LabError):
    """A run that cannot start or could not finish."""


@dataclass
class RunOptions:
    scenario: str = "krx-2008"
    strategy: str = "tcp-prefix"
    messages: int = 200
    rate: float | None = None          # MD messages per second leaving the exchange; None: 80 % of the MD path
    venues: int = 1
    out: str = "run.pcapng"
    telemetry: str | None = None       # default: next to out, .tel
    log: str | None = None             # default: next to out, .log.zst
    seed: int = 1
    orders: str = DEFAULT_ORDERS       # the order protocol's name
    md: str = DEFAULT_MD               # the market-data protocol the feed publishes
    queue_model: str = "risk-averse"
    models: tuple[str, ...] = tuple(MODELS)   # per venue, on its one instrument
    feed: str = "synthetic"            # synthetic | log:PATH | pcap:PATH
    port: int = 0                      # first port to use (feeds, then gateways); 0: any free port
    capture: str = "auto"              # packet (AF_PACKET on lo) | sockets (the sockets' stamps) | auto
    progress: Callable[[int, int], None] | None = None


@dataclass
class RunResult:
    out: str
    telemetry: str
    log: str
    scenario: str
    strategy: str
    messages: int
    rate: float
    engine: dict
    venues: list[dict]
    capture: dict
    delivery: dict
    taps: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _sibling(out: str, suffix: str) -> str:
    path = Path(out)
    return str(path.with_name(path.name.removesuffix(".pcapng").removesuffix(".pcap") + suffix))


def _check(options: RunOptions):
    if options.md not in md_protocol_names():
        raise RunError(f"market-data protocol {options.md!r}: use one of {', '.join(md_protocol_names())}")
    if options.strategy not in REAL_STRATEGIES:
        raise RunError(f"strategy {options.strategy!r} does not run on the real engine "
                       f"(real strategies: {', '.join(REAL_STRATEGIES)}; `lab simulate` runs the others)")
    try:
        scenario = load_scenario(options.scenario)
    except SimulatorError as exc:
        raise RunError(str(exc)) from None
    if scenario.order_path is None:
        raise RunError(f"scenario {scenario.name}: lab run needs an order_path")
    unknown = [m for m in options.models if m not in MODELS]
    if unknown or not options.models:
        raise RunError(f"--models: {', '.join(unknown) or 'none given'}; choose from {', '.join(MODELS)}")
    if options.capture not in CAPTURES:
        raise RunError(f"--capture {options.capture!r}: choose from {', '.join(CAPTURES)}")
    if options.messages < 1 or options.venues < 1 or options.venues > 8:
        raise RunError("--messages must be >= 1 and --venues 1..8")
    if options.rate is not None and not options.rate > 0:
        raise RunError("--rate must be > 0 messages per second")
    if not 0 <= options.port <= 65535 - 2 * options.venues:
        raise RunError(f"--port {options.port}: no room for {2 * options.venues} ports above it")
    return scenario


def md_schedule(scenario, l3_bytes: np.ndarray, rate: float | None):
    """(delivery offset ps from the first departure, transit ps exchange -> host NIC, rate used)."""
    path = scenario.md_path
    if rate is None:                     # 80 % of the slowest hop for these datagrams
        alone = path.transit([0], [int(l3_bytes.max())])
        slowest = int(alone.service.max())
        rate = 0.8 * 10**12 / max(slowest, 1)
    period_ps = int(round(10**12 / rate))
    departures = np.arange(len(l3_bytes), dtype=np.int64) * period_ps
    transit = path.transit(departures, l3_bytes)
    first, last = transit.first_bit(path.start), transit.last_bit(path.end)
    nic_rx = path.receiver.serdes_rx_ps if path.receiver else 0
    return last + nic_rx, last - first, rate


def _free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def engine_config(name: str, options: RunOptions, feeds: list[int], gateways: list[tuple[str, int]],
                  telemetry: str, log: str) -> str:
    lines = ["[engine]", f'name = "{name}"', f'strategy = "{options.strategy}"', f'telemetry = "{telemetry}"',
             f'logger = "{log}"', ""]
    for i, (port, (host, gateway)) in enumerate(zip(feeds, gateways), start=1):
        lines += ["[[venues]]", f"id = {i}", f'feed = "127.0.0.1:{port}"', f'gateway = "{host}:{gateway}"',
                  f'orders = "{options.orders}"', f'md = "{options.md}"', "",
                  "[[instruments]]", f"venue = {i}", f"id = {INSTRUMENT}", f"tick = {TICK}", ""]
        for model in options.models:
            lines += ["[[models]]", f'type = "{model}"', f"venue = {i}", f"instrument = {INSTRUMENT}",
                      *MODELS[model], ""]
    lines += ["[risk]", "max_position = 1000000", "max_open_orders = 64", "max_order_qty = 10", ""]
    return "\n".join(lines)


def _capture_child(ports, raw_path, conn, runner_pid: int) -> None:
    """The capture process: capture until told to stop, then report stats (or the error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)       # not the parent's handler: a SIGTERM just ends it
    die_with_parent(runner_pid, signal.SIGTERM)
    try:
        capture = LiveCapture("lo", ports=ports, out=raw_path, directions="both").start()
    except Exception as exc:                             # reported to the parent as one line
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))
    conn.poll(None)
    try:
        conn.send(("stats", capture.stop()))
    except Exception as exc:
        conn.send(("error", str(exc)))


class _Capture:
    def __init__(self, ports, raw_path):
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_capture_child, args=(tuple(ports), raw_path, child, os.getpid()),
                                       daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(10):
            self.kill()
            raise RunError("the loopback capture did not start within 10 s")
        kind, value = self.conn.recv()
        if kind == "error":
            self.process.join(5)
            raise RunError(f"cannot capture on lo: {value}")

    def stop(self) -> dict:
        self.conn.send("stop")
        if not self.conn.poll(30):
            raise RunError("the loopback capture did not stop within 30 s")
        kind, value = self.conn.recv()
        self.process.join(5)
        if kind == "error":
            raise RunError(f"the loopback capture failed: {value}")
        return value

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


def _wait_for_kernel_stamps(timeout_s: float = 2.0) -> bool:
    """The kernel turns software RX stamping on asynchronously (a static key): probe a stamped
    socket until a datagram comes back stamped, so the engine's first datagrams are stamped too."""
    receiver = udp_receiver()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                probe.sendto(b"stamp?", receiver.getsockname())
                time.sleep(0.001)
                while (got := recv_stamped(receiver)) is not None:
                    if got[1] is not None:
                        return True
    finally:
        receiver.close()
    return False


def _clock_samples() -> list[list[int]]:
    rows = []
    for _ in range(CLOCK_SAMPLES):
        rows.append(list(paired_sample()))
        time.sleep(0.0005)
    return rows


def _unique_seqs(feed, md_format):
    """Venue v's datagrams renumbered v * SEQ_STRIDE + 1, + 2, ...: one seq space across venues.
    Returns (payloads, their seqs as uint64)."""
    seqs = feed.venue.astype(np.uint64) * np.uint64(SEQ_STRIDE) + feed.seq.astype(np.uint64)
    payloads = []
    for payload, seq in zip(feed.payloads, seqs.tolist()):
        patched = bytearray(payload)
        md_format.stamp(patched, seq=seq)
        payloads.append(bytes(patched))
    return payloads, seqs


class _Engine:
    def __init__(self, config_path: str, workdir: str, name: str):
        self.name = name
        self.stdout = open(os.path.join(workdir, "engine.out"), "w+")
        self.stderr = open(os.path.join(workdir, "engine.err"), "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "engine", "--config", config_path],
                                        stdout=self.stdout, stderr=self.stderr, stdin=subprocess.DEVNULL,
                                        env=child_environment())

    def check_alive(self) -> None:
        status = self.process.poll()
        if status is not None:
            raise RunError(f"the engine exited with status {status} mid-run: {self.last_error()}")

    def last_error(self) -> str:
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else "(nothing on its stderr)"

    def summary(self) -> dict:
        self.stdout.seek(0)
        try:
            return json.loads(self.stdout.read())
        except ValueError:
            raise RunError(f"the engine printed no summary: {self.last_error()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for leftover in Path("/dev/shm").glob(f"wirelab-{self.name}.*"):
            leftover.unlink(missing_ok=True)
        self.stdout.close()
        self.stderr.close()


def run(options: RunOptions) -> RunResult:
    started = time.monotonic()
    scenario = _check(options)
    toml_text, _source = scenario_text(options.scenario)
    out = options.out
    telemetry = options.telemetry or _sibling(out, ".tel")
    log = options.log or _sibling(out, ".log.zst")
    for path in (out, telemetry, log):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise RunError(f"{path}: no such directory")

    feed = feed_source(options.feed, options.messages, options.seed, tuple(range(1, options.venues + 1)),
                       scenario.market_data.payload_bytes)
    md_format = md_protocol(options.md)
    datagrams = [md_protocol(DEFAULT_MD).decode(p) for p in feed.payloads]     # the venue's own L2 market
    packets, first_seqs, told = md_format.from_l2(datagrams)                 # as the feed publishes it
    datagrams = [datagrams[i] for i in told]
    feed = replace(feed, payloads=packets, seq=np.array(first_seqs, np.uint64), venue=feed.venue[told],
                   instrument=feed.instrument[told])
    payloads, seqs = _unique_seqs(feed, md_format)
    l3 = np.array([len(p) for p in payloads], np.int64) + scenario.market_data.transport.header
    deliver_ps, transit_ps, rate = md_schedule(scenario, l3, options.rate)

    sweep_stale_runs()
    name = f"lab-run-{os.getpid()}"
    workdir = tempfile.mkdtemp(prefix=f"{RUN_FOLDER_PREFIX}{os.getpid()}-")   # 0700
    gateways, capture, engine, publisher = [], None, None, None
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        K = options.venues
        base = options.port
        feed_ports = [base + i for i in range(K)] if base else [_free_port(socket.SOCK_DGRAM) for _ in range(K)]
        for port in feed_ports:
            if not _udp_port_free(port):
                raise RunError(f"port 127.0.0.1:{port} (UDP, a feed) is busy")
        model = queue_model(options.queue_model)
        for i in range(K):
            gateways.append(OrderGateway(i + 1, MatchingEngine(i + 1, model), protocol=options.orders,
                                         port=base + K + i if base else 0, keep_reads=True))
        addresses = [g.address for g in gateways]
        raw_path = os.path.join(workdir, "lo.pcapng")
        notes = []
        if options.capture != "sockets":
            try:
                capture = _Capture(feed_ports + [port for _host, port in addresses], raw_path)
            except RunError as exc:
                if options.capture == "packet" or "CAP_NET_RAW" not in str(exc):
                    raise
                notes.append("no CAP_NET_RAW to capture on lo: the capture is rebuilt from the sockets' own "
                             "kernel stamps (no engine ACKs, no venue replies; docs/run.md)")
        if not _wait_for_kernel_stamps():
            notes.append("the kernel gave no software RX stamp within 2 s of asking")
        clock_start = _clock_samples()
        config_path = os.path.join(workdir, "engine.toml")
        with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(engine_config(name, options, feed_ports, addresses, telemetry, log))
        engine = _Engine(config_path, workdir, name)
        _wait_for_connections(gateways, engine)

        t0 = time.time_ns() + START_LEAD_NS
        deliver_at = t0 + deliver_ps // PS_PER_NS
        publisher = FeedPublisher({i + 1: ("127.0.0.1", port) for i, port in enumerate(feed_ports)}, options.md)
        matching = {g.venue: g.matching for g in gateways}

        def idle(budget_s: float) -> None:
            # epoll rounds a timeout up to whole ms: wait whole ms only, and leave a ms spare
            wait_ms = int(budget_s * 1000) - 1
            for gateway in gateways:
                gateway.poll(max(wait_ms, 0) // len(gateways) / 1000)
            engine.check_alive()

        def sent(i: int) -> None:
            matching[int(feed.venue[i])].on_feed(datagrams[i])

        delivery = publisher.publish(replace(feed, payloads=payloads, seq=seqs), deliver_at, idle=idle, sent=sent,
                                     progress=options.progress)
        _serve_for(gateways, engine, DRAIN_S)
        engine.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while engine.process.poll() is None:
            if time.monotonic() > deadline:
                raise RunError(f"the engine did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
            for gateway in gateways:
                gateway.poll(0.01)
        if engine.process.returncode != 0:
            raise RunError(f"the engine exited with status {engine.process.returncode}: {engine.last_error()}")
        summary = engine.summary()
        clock_end = _clock_samples()
        sent_orders, _calibration, _meta = read_telemetry(telemetry)
        kernel_tx = np.concatenate([sent_orders["kernel_tx_ns"], sent_orders["prefix_kernel_tx_ns"]])
        gateway_ports = [p for _h, p in addresses]

        def write(batch, linktypes, capture_kind: str) -> tuple[int, dict]:
            taps = build_taps(batch, linktypes, scenario, feed_ports, gateway_ports, np.sort(seqs),
                              transit_ps[np.argsort(seqs)], kernel_tx, md_format)
            info = {
                "scenario": scenario.name, "scenario_toml": toml_text, "strategy": options.strategy,
                "venues": K, "orders": options.orders, "md": options.md, "messages": len(payloads), "rate": rate,
                "capture": capture_kind, "feed_ports": feed_ports, "gateway_ports": gateway_ports,
                "order_l3_header_bytes": taps.order_l3_header_bytes,
                "clock_samples": {"start": clock_start, "end": clock_end},
            }
            return write_taps(out, taps, scenario, run_info_comment(info)), taps.kinds

        if capture is not None:
            capture_stats = {"kind": "packet", **capture.stop()}
            capture = None
            with open_capture(raw_path) as raw:
                batches = list(raw.batches(MAX_RUN_PACKETS, release=False))
                if len(batches) != 1:
                    raise RunError(f"the loopback capture holds {'no' if not batches else 'too many'} packets")
                frames, kinds = write(batches[0], [i.linktype for i in raw.interfaces], "packet")
        else:
            rebuilt = _rebuild_from_sockets(payloads, feed, delivery, publisher, feed_ports, gateways, sent_orders,
                                            options, md_format)
            capture_stats = {"kind": "sockets", "packets": len(rebuilt), "drops": 0}
            frames, kinds = write(rebuilt, [1], "sockets")
        return RunResult(
            out=out, telemetry=telemetry, log=log, scenario=scenario.name, strategy=options.strategy,
            messages=len(payloads), rate=rate, engine=summary, venues=[g.stats() for g in gateways],
            capture={**capture_stats, "frames_written": frames},
            delivery=delivery.summary(), taps=kinds, seconds=time.monotonic() - started,
            warnings=notes + _warnings(capture_stats, delivery))
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if engine is not None:
            if engine.process.poll() is None:
                engine.process.send_signal(signal.SIGTERM)
                try:
                    engine.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            engine.kill()
        if publisher is not None:
            publisher.close()
        for gateway in gateways:
            gateway.close()
        if capture is not None:
            capture.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def sweep_stale_runs() -> None:
    """Remove what runs killed outright left: their engines' shared memory and their temporary
    folders. Only this user's, and only where the recorded owner (the segment's creator, the
    pid in the folder's name) is gone."""
    sweep_stale_segments()
    for folder in Path(tempfile.gettempdir()).glob(f"{RUN_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(RUN_FOLDER_PREFIX):].split("-", 1)[0]
        try:
            info = folder.lstat()
        except FileNotFoundError:
            continue
        if pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not is_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _rebuild_from_sockets(payloads, feed, delivery, publisher, feed_ports, gateways, sent_orders, options, md_format):
    """The frames the sockets' own stamps can tell (lab.run.sockets)."""
    sent = []
    for payload, app_ns in zip(payloads, delivery.app_ns.tolist()):     # the bytes as sent: send_ts set
        patched = bytearray(payload)
        md_format.stamp(patched, send_ts_ns=app_ns)
        sent.append(bytes(patched))
    venues = [(g.venue, g.address[1], g.reads, g.records(), g.accepted_ns) for g in gateways]
    return rebuild(sent, feed.venue, delivery.kernel_tx_ns,
                   {v: sock.getsockname()[1] for v, sock in publisher.sockets.items()},
                   {i + 1: port for i, port in enumerate(feed_ports)}, venues, sent_orders,
                   order_protocol(options.orders).prefix_bytes if options.strategy == "tcp-prefix" else None)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _wait_for_connections(gateways, engine: _Engine) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not all(g.stats()["connections"] for g in gateways):
        engine.check_alive()
        if time.monotonic() > deadline:
            raise RunError(f"the engine did not connect to every venue within {CONNECT_TIMEOUT_S:.0f} s")
        for gateway in gateways:
            gateway.poll(0.01)
    _serve_for(gateways, engine, 0.05)              # the engine primes its first prefix


def _serve_for(gateways, engine: _Engine, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for gateway in gateways:
            gateway.poll(0.005)
        engine.check_alive()


def _warnings(capture: dict, delivery) -> list[str]:
    notes = []
    if capture.get("drops"):
        notes.append(f"THE CAPTURE DROPPED {capture['drops']} PACKETS: the run's figures are incomplete")
    missing = delivery.summary().get("missing_tx_stamps", 0)
    if missing:
        notes.append(f"{missing} datagrams have no kernel TX stamp")
    return notes
