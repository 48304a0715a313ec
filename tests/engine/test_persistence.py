"""Persistence: the logger records every queue of a running engine; replay reproduces the orders.

The engine runs as a real process with `logger = ...`, against a venue played by the test
that rests day orders, fills IOCs, fills some day orders, and acknowledges cancels. What the
venue received is the independent record the log is checked against.
"""
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, parse_config
from engine.logger import (CONFIG, END, ENGINE_QUEUES, HEADER, QUEUE, RECORD, Logger, LogWriter, QueueReader,
                           read_log)
from engine.messages import TIMING
from engine.protocol import md, orders as wire
from engine.queues import Consumer, Queue, fingerprint
from engine.telemetry import ORDER_ROW
from test_engine_e2e import ACK, FILL, NEW_ORDER, MiniVenue, free_port

CANCEL = struct.Struct("<HBBIQQQ")
REJECT = struct.Struct("<HBBIQq")
TICK = 10**6
DAY_FILL_EVERY = 5                      # the venue fills every 5th day order it rests


class RestingVenue(MiniVenue):
    """Rests day orders (fills every 5th), fills IOCs, acks cancels of resting orders, rejects others."""

    def __init__(self):
        super().__init__()
        self.cancels, self.resting, self.days = [], set(), 0
        self.last_message = time.monotonic()

    def serve(self, conn):
        conn.settimeout(0.2)
        buf = b""
        while not self.stop:
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            while len(buf) >= 3 and len(buf) >= buf[0] | buf[1] << 8:
                length = buf[0] | buf[1] << 8
                msg, buf = buf[:length], buf[length:]
                conn.sendall(self.answer(msg))
                self.last_message = time.monotonic()
        conn.close()

    def answer(self, msg: bytes) -> bytes:
        if msg[2] == wire.CANCEL_TYPE:
            _l, _t, _flags, _acct, cancel_id, trigger, target = CANCEL.unpack(msg)
            self.cancels.append((trigger, target))
            if target in self.resting:
                self.resting.discard(target)
                return ACK.pack(32, wire.ACK_TYPE, wire.CANCEL_TYPE, cancel_id, target, 0)
            return REJECT.pack(24, wire.REJECT_TYPE, wire.CANCEL_TYPE, 1, cancel_id, 0)
        _l, _t, _flags, _acct, oid, trigger, _inst, side, tif, price, qty = NEW_ORDER.unpack(msg)
        self.orders.append((trigger, side, tif, price, qty))
        ack = ACK.pack(32, wire.ACK_TYPE, wire.NEW_ORDER_TYPE, oid, oid, 0)
        if tif == wire.DAY:
            self.days += 1
            if self.days % DAY_FILL_EVERY:
                self.resting.add(oid)
                return ack
        return ack + FILL.pack(64, wire.FILL_TYPE, side, oid, oid, oid, price, qty, 0, 0)


def market(n: int, seed: int = 7) -> list[bytes]:
    """A random walk of the top of book: the bid moves, the spread widens and narrows, sizes vary."""
    rng = random.Random(seed)
    bid, spread, previous, out = 100 * 10**8, 1, None, []
    for seq in range(1, n + 1):
        r = rng.random()
        if r < 0.3:
            bid += TICK * rng.choice((-1, 1))
        elif r > 0.85:
            spread = rng.choice((1, 2, 4))
        ask = bid + spread * TICK
        updates = [md.L2Update(md.BID, md.SET, bid, rng.randint(1, 1000)),
                   md.L2Update(md.ASK, md.SET, ask, rng.randint(1, 1000))]
        if previous is not None:
            updates += [md.L2Update(md.BID, md.DELETE, previous[0], 0)] * (previous[0] != bid)
            updates += [md.L2Update(md.ASK, md.DELETE, previous[1], 0)] * (previous[1] != ask)
        previous = (bid, ask)
        out.append(md.MdDatagram(1, seq, 7, time.time_ns(), tuple(updates)).encode())
    return out


def run_logged_engine(tmp_path, name, sends, mode="single"):
    venue = RestingVenue()
    venue.start()
    feed = free_port(socket.SOCK_DGRAM)
    log = tmp_path / "run.log.zst"
    config = tmp_path / "engine.toml"
    config.write_text(f"""
[engine]
name = "{name}"
logger = "{log}"
mode = "{mode}"
duration_s = 30.0
[[venues]]
id = 1
feed = "127.0.0.1:{feed}"
gateway = "127.0.0.1:{venue.port}"
[[instruments]]
venue = 1
id = 7
tick = {TICK}
[[models]]
type = "join-the-touch"
venue = 1
instrument = 7
qty = 2
max_spread = {2 * TICK}
[[models]]
type = "imbalance-taker"
venue = 1
instrument = 7
qty = 1
threshold_pct = 70
[risk]
max_position = 100000
max_open_orders = 1000
""")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while venue.connections == 0 and time.time() < deadline:    # the engine is up and trading
            time.sleep(0.02)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i, payload in enumerate(sends):
            sender.sendto(payload, ("127.0.0.1", feed))
            if i % 50 >= 40:
                time.sleep(0.0005)                # bursts of 40 with pauses: replies cross new data
        sender.close()
        while time.monotonic() - venue.last_message < 0.3 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        venue.stop = True
        venue.join(timeout=5)
    assert proc.returncode == 0, err
    return json.loads(out), log, venue


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("persistence")
    name = f"persist-{os.getpid()}"
    sends = market(300)
    summary, log, venue = run_logged_engine(tmp_path, name, sends)
    return {"summary": summary, "log": log, "venue": venue, "name": name, "sends": sends, "tmp": tmp_path}


def test_every_market_update_and_order_is_in_the_log(logged_run):
    log = read_log(str(logged_run["log"]))
    summary, venue = logged_run["summary"], logged_run["venue"]
    assert summary["md_handled"] == 300
    assert log.end["complete"] and all(q.start_seq == 0 and not q.gaps for q in log.queues.values())
    # every datagram the feed sent, by its own sequence number
    assert sorted(log.queues["md"].messages["md_seq"].tolist()) == list(range(1, 301))
    # the logged order stream is what the venue received, in the same order
    requests = log.queues["orders"].messages
    new = requests[requests["kind"] == ord("N")]
    assert [(int(r["md_seq"]), int(r["side"]), int(r["time_in_force"]), int(r["price"]), int(r["qty"]))
            for r in new] == venue.orders
    cancels = requests[requests["kind"] == ord("C")]
    assert [int(c["md_seq"]) for c in cancels] == [trigger for trigger, _target in venue.cancels]
    # both models traded, and the join-the-touch model cancelled and replaced
    assert {int(t) for t in new["time_in_force"]} == {wire.DAY, wire.IOC}
    assert len(cancels) >= 1            # how many depends on how often an ack beats the next move
    assert summary["logger"]["messages"]["orders"] == len(requests) == summary["orders"] + len(cancels)
    assert summary["logger"]["missed"] == {"md": 0, "orders": 0, "accounts": 0, "timing": 0}
    assert os.stat(logged_run["log"]).st_mode & 0o777 == 0o600


def test_logger_process_and_shared_memory_are_gone_after_the_run(logged_run):
    pid = logged_run["summary"]["logger"]["pid"]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"engine.logger" not in f.read()
    except FileNotFoundError:
        pass
    assert [f for f in os.listdir("/dev/shm") if logged_run["name"] in f] == []


def test_replay_reproduces_the_order_stream_byte_for_byte(logged_run, lab):
    result = lab("replay", logged_run["log"], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["identical"] and report["ordering"] == "apply records" and report["complete"]
    assert report["matched"] == report["logged"] == report["replayed"] == logged_run["summary"]["logger"][
        "messages"]["orders"]
    assert report["mismatched"] == 0 and report["first_mismatch"] is None
    assert report["market_updates"] == 300 and report["applied"] > 0
    table = lab("replay", logged_run["log"])
    assert table.returncode == 0 and "identical" in table.stdout


def rewrite(log, path, change_orders=None):
    """Write `log` again through LogWriter, optionally changing its OrderRequests first."""
    writer = LogWriter(str(path))
    writer.json(HEADER, log.header)
    queues = sorted(log.queues.values(), key=lambda q: q.index)
    for q in queues:
        writer.json(QUEUE, {"name": q.name, "role": q.role, "layout": q.layout.name, "descr": q.layout.dtype.descr,
                            "fingerprint": fingerprint(q.layout.dtype),
                            "payload_size": q.layout.size, "capacity": q.capacity, "start_seq": 0}, q.index)
    writer.json(CONFIG, log.config)
    for q in queues:
        raw = np.frombuffer(q.messages.tobytes(), np.uint8).reshape(len(q.messages), -1).copy()
        if q.role == "orders" and change_orders:
            change_orders(raw.view(q.layout.dtype)[:, 0])
        if len(raw):
            writer.messages(q.index, 0, raw)
    writer.json(END, log.end)
    writer.close()


def test_replay_finds_a_changed_order_and_exits_1(logged_run, lab, tmp_path):
    log = read_log(str(logged_run["log"]))
    same, changed = tmp_path / "same.log.zst", tmp_path / "changed.log.zst"
    rewrite(log, same)
    assert lab("replay", same, "--json").returncode == 0

    def nudge(orders):
        orders["price"][17] += TICK
    rewrite(log, changed, nudge)
    result = lab("replay", changed, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["mismatched"] == 1 and report["matched"] == report["logged"] - 1
    assert report["first_mismatch"]["index"] == 17 and report["first_mismatch"]["fields"] == ["price"]
    first = report["first_mismatch"]
    assert first["logged"]["price"] - first["replayed"]["price"] == TICK


@pytest.mark.parametrize("damage", ["truncated", "last byte cut", "corrupted", "not a log", "empty"])
def test_a_damaged_log_is_one_line_and_exit_2(logged_run, lab, tmp_path, damage):
    data = logged_run["log"].read_bytes()
    bad = tmp_path / "bad.log.zst"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "last byte cut":
        bad.write_bytes(data[:-1])
    elif damage == "corrupted":
        middle = len(data) // 2
        bad.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 16]) + data[middle + 16:])
    elif damage == "not a log":
        bad.write_bytes(b"[engine]\nname = 'x'\n")
    else:
        bad.write_bytes(b"")
    result = lab("replay", bad)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr


# -- the logger's reading of a ring, in one process -------------------------------------------

def numbered_queue(name, capacity=16):
    return Queue(name, TIMING.dtype, capacity)


def publish_numbered(producer, first, count):
    for seq in range(first, first + count):
        producer.publish(struct.pack("<HHxxxxQQQ", 1, 1, seq, seq, seq))


@pytest.fixture(params=["vectorised", "one slot at a time"])
def read_path(request, monkeypatch):
    monkeypatch.setattr("engine.logger.VECTOR_READS", request.param == "vectorised")


def test_reader_takes_what_a_consumer_takes_including_after_being_sped_past(read_path):
    with numbered_queue(f"persist-reader-{os.getpid()}") as queue:
        producer = queue.producer()
        reader, consumer = QueueReader(queue, 0), Consumer(queue, 0)
        publish_numbered(producer, 0, 10)
        kind, first, payloads = reader.read()
        assert (kind, first, len(payloads)) == ("messages", 0, 10)
        assert [consumer.poll_bytes() for _ in range(10)] == [bytes(p) for p in payloads]
        publish_numbered(producer, 10, 90)                  # 90 more into a ring of 16
        assert reader.read() == ("gap", 10, 75)             # skips to head - capacity + 1 = 85
        assert consumer.poll_bytes() is None and consumer.missed == 75
        kind, first, payloads = reader.read()
        expected = [consumer.poll_bytes() for _ in range(15)]
        assert (kind, first) == ("messages", 85) and [bytes(p) for p in payloads] == expected
        assert reader.read() is None and consumer.poll_bytes() is None
        reader.close()


def test_reader_stops_at_a_slot_being_written_and_treats_a_later_lap_as_sped_past(read_path):
    with numbered_queue(f"persist-slots-{os.getpid()}") as queue:
        producer = queue.producer()
        publish_numbered(producer, 0, 4)
        reader = QueueReader(queue, 0)
        slot2 = 128 + 2 * queue.stride                      # Queue layout: slots from byte 128
        struct.pack_into("<Q", queue.buf, slot2, 1)         # message 2 is being written (lap 0: 2*0+1)
        kind, first, payloads = reader.read()
        assert (kind, first, len(payloads)) == ("messages", 0, 2)
        assert reader.read() is None                        # not ready: wait for it
        struct.pack_into("<Q", queue.buf, slot2, 4)         # lap 1 has taken the slot: sped past
        assert reader.read()[0] == "gap"
        reader.close()


def test_logger_records_a_gap_loudly_and_the_log_reads_back(tmp_path, capsys):
    name = f"persist-gap-{os.getpid()}"
    queues = [Queue(f"{name}.{role}", layout.dtype, 16)
              for role, layout in ENGINE_QUEUES]
    try:
        timing = queues[3].producer()
        path = tmp_path / "gap.log.zst"
        logger = Logger(name, str(path))
        publish_numbered(timing, 0, 5)
        assert logger.drain() == 5
        publish_numbered(timing, 5, 40)                     # laps the ring of 16
        assert logger.drain() == 15
        logger.finish(False, "test", None)
        logger.close()
    finally:
        for q in queues:
            q.close()
    assert "SPED PAST" in capsys.readouterr().err
    log = read_log(str(path))
    logged = log.queues["timing"]
    assert logged.gaps == [(5, 25)] and logged.missed == 25
    assert logged.messages["seq"].tolist() == list(range(5)) + list(range(30, 45))
    assert logged.seqs.tolist() == logged.messages["seq"].tolist()
    assert not log.end["complete"] and log.end["missed"]["timing"] == 25


def test_standalone_logger_follows_an_engine_until_it_exits(tmp_path):
    name = f"persist-alone-{os.getpid()}"
    queues = [Queue(f"{name}.{role}", layout.dtype, 1 << 10)
              for role, layout in ENGINE_QUEUES]
    path = tmp_path / "alone.log.zst"
    try:
        timing = queues[3].producer()
        publish_numbered(timing, 0, 100)
        proc = subprocess.Popen([sys.executable, "-m", "engine.logger", "--engine", name, "--out", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "logging engine" in proc.stderr.readline()   # attached
        publish_numbered(timing, 100, 200)
    finally:
        for q in queues:
            q.close()                                       # the engine exits: its segments go
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["complete"] and summary["messages"]["timing"] == 300
    log = read_log(str(path))
    assert log.queues["timing"].messages["seq"].tolist() == list(range(300)) and log.config is None


def test_standalone_logger_without_an_engine_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.logger", "--engine", "no-such-engine", "--out",
                             str(tmp_path / "x.log.zst")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-engine" in result.stderr
    assert not (tmp_path / "x.log.zst").exists()


def test_logger_option_needs_the_timing_queue():
    with pytest.raises(ConfigError, match="engine.logger"):
        parse_config('[engine]\nlogger = "x.log.zst"\ntiming = false\n')


def test_docs_describe_the_log_and_telemetry_formats_as_the_code_has_them():
    doc = (Path(__file__).parents[2] / "docs" / "telemetry.md").read_text()
    for layout in [RECORD] + [layout for _role, layout in ENGINE_QUEUES]:
        assert layout.table() in doc, layout.name
    for column in ORDER_ROW.names:
        assert f"| `{column}` |" in doc, column
