"""The engine as a real process against a minimal venue played by the test, on loopback."""
import json
import signal
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from engine.protocol import md, orders as wire
from engine.telemetry import read_telemetry, stage_ns

NEW_ORDER = struct.Struct("<HBBIQQIBB2xqq")
ACK = struct.Struct("<HBB4xQQq")
FILL = struct.Struct("<HBB4xQQQqqqq")
TICK = 10**6


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class MiniVenue(threading.Thread):
    """Accepts the engine, acks and fully fills every NewOrder; records what arrived how."""

    def __init__(self, drop_first_connection_after=None):
        super().__init__(daemon=True)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.orders, self.voids, self.connections, self.chunks = [], 0, 0, []
        self.drop_after = drop_first_connection_after
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            self.connections += 1
            self.serve(conn)

    def serve(self, conn):
        conn.settimeout(0.2)
        buf = b""
        while not self.stop:
            try:
                data = conn.recv(4096)
            except socket.timeout:
                continue
            if not data:
                break
            self.chunks.append(len(data))
            buf += data
            while len(buf) >= 3 and len(buf) >= buf[0] | buf[1] << 8:
                length = buf[0] | buf[1] << 8
                msg, buf = buf[:length], buf[length:]
                if msg[2] == wire.NEW_ORDER_TYPE:
                    (_l, _t, flags, _acct, oid, trigger, inst, side, tif, price, qty) = NEW_ORDER.unpack(msg)
                    if qty == 0:
                        self.voids += 1
                        continue
                    self.orders.append((trigger, flags, side, price, qty))
                    conn.sendall(ACK.pack(32, wire.ACK_TYPE, wire.NEW_ORDER_TYPE, oid, oid, 0)
                                 + FILL.pack(64, wire.FILL_TYPE, side, oid, oid, oid, price, qty, 0, 0))
            if self.drop_after is not None and self.connections == 1 and len(self.orders) >= self.drop_after:
                break
        conn.close()


def datagram(seq, bid_qty, ask_qty, venue=1, instrument=7):
    bid, ask = 100 * 10**8, 100 * 10**8 + TICK
    return md.MdDatagram(venue, seq, instrument, time.time_ns(), (
        md.L2Update(md.BID, md.SET, bid, bid_qty), md.L2Update(md.ASK, md.SET, ask, ask_qty))).encode()


def run_engine(tmp_path, venue, strategy, sends, name, mode="single", venue_options=""):
    feed = free_port(socket.SOCK_DGRAM)
    tel = tmp_path / "run.tel"
    config = tmp_path / "engine.toml"
    config.write_text(f"""
[engine]
name = "{name}"
strategy = "{strategy}"
telemetry = "{tel}"
duration_s = 6.0
mode = "{mode}"
[[venues]]
id = 1
feed = "127.0.0.1:{feed}"
gateway = "127.0.0.1:{venue.port}"
{venue_options}
[[instruments]]
venue = 1
id = 7
tick = {TICK}
[[models]]
type = "imbalance-taker"
venue = 1
instrument = 7
qty = 1
threshold_pct = 70
[risk]
max_position = 1000
max_open_orders = 1000
""")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)                                   # calibration, connect, prime
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for payload in sends:
            sender.sendto(payload, ("127.0.0.1", feed))
            time.sleep(0.005)
        sender.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return json.loads(out), tel


@pytest.mark.parametrize("strategy,mode", [("none", "single"), ("tcp-prefix", "single"),
                                           ("tcp-prefix", "processes")])
def test_engine_trades_every_lopsided_update_and_records_causal_telemetry(tmp_path, strategy, mode):
    venue = MiniVenue()
    venue.start()
    lopsided = [datagram(seq, 900, 100) for seq in range(1, 41)]
    garbage = [b"", b"WM", b"XX" + bytes(40), datagram(999, 5, 5)[:-3]]
    summary, tel = run_engine(tmp_path, venue, strategy, lopsided + garbage,
                              f"e2e-{strategy}-{mode}-{os.getpid()}", mode)
    venue.stop = True
    venue.join(timeout=5)
    assert summary["md_handled"] == 40
    assert summary["md_dropped"] == {"short datagram": 2, "unknown magic": 1, "length mismatch": 1}
    triggers = [t for t, *_ in venue.orders]
    if mode == "single":
        assert triggers == list(range(1, 41))
    else:   # the ideal-orders vector keeps each model's latest wish: an Overseer process that falls
        # behind acts on the newest update and skips the ones in between (never an older one)
        assert triggers == sorted(set(triggers)) and set(triggers) <= set(range(1, 41)) and len(triggers) >= 20
    assert all(side == wire.BUY and price == 100 * 10**8 + TICK for _, _, side, price, _ in venue.orders)
    assert summary["positions"] == {"1": {"7": len(triggers)}}
    prefixed = {flags & wire.FLAG_PREFIX_EARLY for _, flags, *_ in venue.orders}
    assert prefixed == ({1} if strategy == "tcp-prefix" else {0})
    orders, calibration, meta = read_telemetry(tel)
    assert len(orders) == len(triggers) and meta["strategy"] == strategy
    assert (orders["kernel_tx_ns"] > 0).all()
    stages = stage_ns(orders, calibration)
    chain = [stages[k] for k in ("kernel_rx", "app_in", "decision", "app_out", "kernel_tx")]
    slack = int(calibration.residual_ns_p99) + 1000      # calibration error bound
    for earlier, later in zip(chain, chain[1:]):
        assert (later - earlier >= -slack).all()
    if strategy == "tcp-prefix":
        assert (orders["order_bytes"] == wire.NEW_ORDER_SIZE - wire.NEW_ORDER_PREFIX_BYTES).all()
        assert ((orders["prefix_kernel_tx_ns"] > 0) & (orders["prefix_kernel_tx_ns"] < orders["kernel_tx_ns"])).all()


def test_engine_reconnects_after_the_venue_drops_it(tmp_path):
    venue = MiniVenue(drop_first_connection_after=5)
    venue.start()
    sends = [datagram(seq, 900, 100) for seq in range(1, 101)]
    summary, _ = run_engine(tmp_path, venue, "tcp-prefix", sends, f"e2e-reconnect-{os.getpid()}")
    venue.stop = True
    venue.join(timeout=5)
    assert venue.connections == 2
    assert summary["gateway"]["disconnects"] == 1 and summary["gateway"]["connects"] == 2
    assert not summary["venue_failed"]
    # trading resumed on the new connection: orders after the drop reached the venue
    assert len(venue.orders) > 5 + 50
    assert summary["orders"] == len(venue.orders)          # every order sent arrived


def test_timekeeper_attaches_to_a_running_engine_and_reports_stages(tmp_path):
    venue = MiniVenue()
    venue.start()
    name = f"e2e-tk-{os.getpid()}"
    keeper = {}

    def observe():
        time.sleep(0.6)                                   # the engine has created its queues
        keeper["result"] = subprocess.run(
            [sys.executable, "-m", "lab", "timekeeper", "--engine", name, "--duration", "3", "--json",
             "--from-start"],
            capture_output=True, text=True, timeout=60)

    watcher = threading.Thread(target=observe)
    watcher.start()
    sends = [datagram(seq, 900, 100) for seq in range(1, 201)]
    summary, _ = run_engine(tmp_path, venue, "none", sends, name)
    watcher.join()
    venue.stop = True
    result = keeper["result"]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stages = report["stages"]
    assert set(stages) == {"md_handler:market_update", "trade_model:ideal_order", "overseer:order_request"}
    assert stages["md_handler:market_update"]["count"] == summary["md_handled"] == 200
    assert stages["overseer:order_request"]["count"] == summary["orders"] == 200
    # each stage publishes after the one before it, for the same origin
    assert stages["md_handler:market_update"]["p50_ns"] <= stages["trade_model:ideal_order"]["p50_ns"] \
        <= stages["overseer:order_request"]["p50_ns"]
    assert report["missed"] == 0


def test_timekeeper_without_an_engine_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "lab", "timekeeper", "--engine", "no-such-engine",
                             "--duration", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-engine" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_engine_cleanly_and_leave_no_shared_memory(tmp_path, sig):
    venue = MiniVenue()
    venue.start()
    name = f"e2e-sig-{sig.value}-{os.getpid()}"
    config = tmp_path / "engine.toml"
    config.write_text(f"""
[engine]
name = "{name}"
telemetry = "{tmp_path / 'run.tel'}"
[[venues]]
id = 1
feed = "127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
gateway = "127.0.0.1:{venue.port}"
[[models]]
type = "imbalance-taker"
venue = 1
instrument = 7
""")
    proc = subprocess.Popen([sys.executable, "-m", "lab", "engine", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not os.path.exists(f"/dev/shm/wirelab-{name}.md") and time.time() < deadline:
        time.sleep(0.05)
    assert os.stat(f"/dev/shm/wirelab-{name}.md").st_mode & 0o077 == 0
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    venue.stop = True
    assert proc.returncode == 0, err
    assert json.loads(out)["orders"] == 0
    assert [f for f in os.listdir("/dev/shm") if name in f] == []
    assert (tmp_path / "run.tel").exists()


@pytest.mark.parametrize("line, key", [('strategy = "teleport"', "engine.strategy"),
                                       ("warm_every = -1", "engine.warm_every"),
                                       ('warm_every = "often"', "engine.warm_every"),
                                       ("spin_us = 2.5", "engine.spin_us"),
                                       ("spin_us = true", "engine.spin_us")])
def test_bad_engine_config_is_one_line_exit_2(tmp_path, line, key):
    config = tmp_path / "engine.toml"
    config.write_text(f"[engine]\n{line}\n")
    result = subprocess.run([sys.executable, "-m", "lab", "engine", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and key in result.stderr


class FixVenue(MiniVenue):
    """Reads FIX NewOrderSingles with simplefix (an independent parser); replies New + Fill."""

    def serve(self, conn):
        import simplefix
        from engine.protocol import fix
        parser = simplefix.FixParser()
        conn.settimeout(0.2)
        seq = 1
        while not self.stop:
            try:
                data = conn.recv(4096)
            except socket.timeout:
                continue
            if not data:
                break
            self.chunks.append(len(data))
            parser.append_buffer(data)
            while (msg := parser.get_message()) is not None:
                assert msg.get(35) == b"D"
                oid, trigger = int(msg.get(11)), int(msg.get(9001))
                side, qty, price = int(msg.get(54)), int(msg.get(38)), int(msg.get(44).replace(b".", b""))
                self.orders.append((trigger, 0, side, price, qty))
                replies = []
                for exec_type, last_qty, leaves in (("0", 0, qty), ("2", qty, 0)):
                    replies.append(fix.ExecutionReport(
                        "VENUE001", "WIRELAB1", seq, time.time_ns(), oid, oid, seq, exec_type, exec_type,
                        msg.get(55).decode(), side, qty, last_qty, price, leaves, qty - leaves, price,
                        time.time_ns()).encode())
                    seq += 1
                conn.sendall(b"".join(replies))
        conn.close()


@pytest.mark.parametrize("strategy", ["none", "tcp-prefix"])
def test_engine_speaks_fix_42(tmp_path, strategy):
    from engine.protocol import fix
    venue = FixVenue()
    venue.start()
    sends = [datagram(seq, 900, 100) for seq in range(1, 31)]
    summary, tel = run_engine(tmp_path, venue, strategy, sends, f"e2e-fix-{strategy}-{os.getpid()}",
                              venue_options='orders = "fix"')
    venue.stop = True
    venue.join(timeout=5)
    assert [t for t, *_ in venue.orders] == list(range(1, 31))
    assert summary["positions"] == {"1": {"7": 30}}                 # the fills came back and counted
    orders, _, _ = read_telemetry(tel)
    sent_at_decision = fix.NEW_ORDER_SINGLE_SIZE - (fix.NEW_ORDER_SINGLE_PREFIX_BYTES if strategy == "tcp-prefix" else 0)
    assert (orders["order_bytes"] == sent_at_decision).all()
    assert (orders["kernel_tx_ns"] > 0).all()
