"""Gateway fuzz (issue 16): the venue as its own process (fuzz_venue.py), all on 127.0.0.1. For each order
protocol, one after another on the fuzz gateway, clients send garbage, half messages and leave, valid
messages cut at every byte, huge length fields, orders the matching engine must reject, a flood they never
read the replies of, and resets (SO_LINGER 0) mid-message. Meanwhile a well-behaved client trades on the
venue's other gateway and gets every reply in time. The venue stays up, each bad input is counted by its
reason and by nothing else, and its RSS stays within 50 MB of where it started.

Each fuzz connection waits for the venue to count the one before it gone: the gateway takes one client at a
time, and a connection it refuses is counted as refused, so the counts are exact. Bounded: a few seconds
per protocol, a timeout on every wait."""
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from pathlib import Path

import numpy as np
import pytest

from engine.lifeline import child_environment
from engine.messages import BUY, DAY, IOC
from engine.protocol import ouch42
from engine.protocol.registry import order_protocol

HOST = "127.0.0.1"
INSTRUMENT, UNKNOWN_INSTRUMENT = 42, 4242
P = 10**8
BID, ASK = 100 * P, 101 * P                  # the venue's book (fuzz_venue.py)
MAX_OUTPUT_BYTES = 256 << 10                 # replies a client may leave unread before the venue drops it
RSS_BUDGET_KB = 50 << 10
REPLY_WITHIN_S = 2.0                         # the well-behaved client's bound on every reply (a liveness bound)
WAIT_S = 5.0
# the counters of the fuzz gateway each case must move exactly as expected (and no others among them)
COUNTED = ("connections", "disconnects", "refused", "malformed", "partial_timeouts", "slow_consumer_disconnects",
           "resets", "disconnects_mid_message", "voids", "session_messages")


class LineReader:
    """Lines from a pipe, each within a timeout."""

    def __init__(self, stream):
        self.fd, self.pending = stream.fileno(), b""

    def line(self, seconds: float) -> bytes:
        deadline = time.monotonic() + seconds
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {seconds} s (got {self.pending[-200:]!r})"
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 1 << 16)
                assert chunk, f"the venue closed its stdout (got {self.pending[-200:]!r})"
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line


class VenueProcess:
    def __init__(self, protocol: str, tmp_path: Path):
        self.stderr = open(tmp_path / f"venue-{protocol}.err", "w+")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fuzz_venue.py")), protocol, str(MAX_OUTPUT_BYTES)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=child_environment())
        self.out = LineReader(self.process.stdout)
        self.good_port, self.fuzz_port = json.loads(self.out.line(20))["ports"]
        self.lock = threading.Lock()

    def stats(self) -> dict:
        assert self.process.poll() is None, f"the venue died: {self.error()}"
        with self.lock:
            self.process.stdin.write(b"stats\n")
            self.process.stdin.flush()
            return json.loads(self.out.line(WAIT_S))

    def wait_for(self, done, seconds: float = WAIT_S) -> dict:
        deadline = time.monotonic() + seconds
        while not done(stats := self.stats()):
            assert time.monotonic() < deadline, f"the venue never got there: {stats}"
            time.sleep(0.002)
        return stats

    def quit(self) -> dict:
        self.process.stdin.write(b"quit\n")
        self.process.stdin.flush()
        final = json.loads(self.out.line(WAIT_S))
        assert self.process.wait(WAIT_S) == 0, self.error()
        return final

    def error(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT_S)
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            with suppress(OSError):
                stream.close()


@pytest.fixture
def venue_process(tmp_path):
    started = []

    def start(protocol: str) -> VenueProcess:
        started.append(VenueProcess(protocol, tmp_path))
        return started[-1]
    yield start
    for venue in started:
        venue.close()


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)     # before connect: it sets the window
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(WAIT_S)
    sock.connect((HOST, port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_events(sock: socket.socket, client, inbox: bytearray, wanted: int, seconds: float = WAIT_S) -> list:
    """The venue's replies decoded by the protocol's own client until `wanted` events came."""
    events, deadline = [], time.monotonic() + seconds
    while len(events) < wanted:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(events)} of {wanted} replies within {seconds} s: {events[-3:]}"
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        assert chunk, f"the venue closed after {len(events)} of {wanted} replies"
        inbox += chunk
        replies = client.replies(inbox)
        assert not replies.broken and not replies.malformed and not replies.unexpected, replies
        del inbox[:replies.consumed]
        events += replies.events
    return events


def waits_for_close(sock: socket.socket) -> None:
    """The venue closed the connection (a FIN, or a RST for what it left unread)."""
    sock.settimeout(WAIT_S)
    with suppress(ConnectionResetError):
        while sock.recv(1 << 16):
            pass


class GoodClient(threading.Thread):
    """Trades on the venue's other gateway until told to stop: an IOC that fills, a DAY order that rests and
    its cancel, each reply waited for at most REPLY_WITHIN_S."""

    def __init__(self, protocol: str, port: int):
        super().__init__(daemon=True)
        self.client = order_protocol(protocol).client(1, "WIRELAB1", "VENUE001")
        self.sock = connect(port)
        self.stop, self.rounds, self.slowest, self.failure = threading.Event(), 0, 0.0, None
        self.sock.sendall(self.client.login())

    def exchange(self, message: bytes, expected: list[tuple[str, int]]) -> None:
        start = time.monotonic()
        self.sock.sendall(message)
        events = read_events(self.sock, self.client, self.inbox, len(expected), REPLY_WITHIN_S)
        self.slowest = max(self.slowest, time.monotonic() - start)
        assert [(e[0], e[1]) for e in events] == expected

    def run(self) -> None:
        self.inbox = bytearray()
        order_id = 1
        try:
            while not self.stop.is_set():
                c = self.client
                self.exchange(c.order(order_id, 0, INSTRUMENT, BUY, IOC, ASK, 1), [("A", order_id), ("F", order_id)])
                self.exchange(c.order(order_id + 1, 0, INSTRUMENT, BUY, DAY, BID - P, 1), [("A", order_id + 1)])
                self.exchange(c.cancel(order_id + 2, 0, order_id + 1, INSTRUMENT, BUY, 1), [("X", order_id + 2)])
                self.rounds += 1
                order_id += 3
        except BaseException as exc:           # reported by the test, not lost in the thread
            self.failure = exc

    def finish(self) -> None:
        """Stop after the round under way, and close the connection."""
        self.stop.set()
        if self.is_alive():
            self.join(REPLY_WITHIN_S * 3 + 1)
        self.sock.close()


# -- what the fuzz sends -------------------------------------------------------------------------------------

def new_order(client, order_id: int, instrument: int = INSTRUMENT, price: int = ASK, tif: int = IOC, qty: int = 1,
              side: int = BUY) -> bytes:
    return client.order(order_id, 0, instrument, side, tif, price, qty)


def garbage(protocol: str, rng: np.random.Generator) -> bytes:
    """Random bytes that cannot start a message of the protocol (so the first read already tells)."""
    data = bytearray(rng.integers(0, 256, int(rng.integers(3, 3000)), np.uint8).tobytes())
    if protocol == "fix":
        data[0] = ord("Z")                                   # not the 8 of "8=FIX.4.2"
    else:
        data[0] = data[0] or 1                               # a Soup length of at least 1 (OUCH)
        data[2] = ord("Z")                                   # neither a binary nor a Soup packet type
    return bytes(data)


HUGE_LENGTHS = {
    "binary": [b"\xff\xffN" + bytes(45), b"\x00\x00N" + bytes(45), b"\xff\xffC" + bytes(29)],
    "fix": [b"8=FIX.4.2\x019=99999999\x0135=D\x01", b"8=FIX.4.2\x019=999\x0135=D\x01", b"8=FIX.4.2\x019=\x01"],
    "ouch42": [b"\xff\xffU" + bytes(100), b"\x00\x00U"],
}


class Fuzz:
    """The cases, each on its own connection to the fuzz gateway; `expect` holds what each must count."""

    def __init__(self, protocol: str, venue: VenueProcess, seed: int):
        self.protocol, self.venue = protocol, venue
        self.proto = order_protocol(protocol)
        self.rng = np.random.default_rng(seed)
        self.next_id = 1_000
        self.cases: list[tuple[str, dict, dict]] = []        # name, expected counts, counted

    def client(self):
        return self.proto.client(1, "WIRELAB1", "VENUE001")

    def ids(self, n: int) -> list[int]:
        self.next_id += n
        return list(range(self.next_id - n, self.next_id))

    def run(self, name: str, action, expected: dict) -> None:
        """One case: its connection made, used and gone (the venue counts one more disconnect), then every
        counter in COUNTED and every reject reason moved by exactly `expected` (connections and disconnects
        1 unless it says)."""
        before = self.venue.stats()
        action()
        after = self.venue.wait_for(lambda s: s["gateways"][1]["disconnects"] > before["gateways"][1]["disconnects"])
        counted = {key: after["gateways"][1][key] - before["gateways"][1][key] for key in COUNTED}
        for reason, n in after["rejects"][1].items():
            counted[f"reject: {reason}"] = n - before["rejects"][1].get(reason, 0)
        counted["messages"] = after["gateways"][1]["messages"] - before["gateways"][1]["messages"]
        want = {"connections": 1, "disconnects": 1, **expected}
        if "messages" not in want:
            counted.pop("messages")
        self.cases.append((name, want, counted))
        assert {k: v for k, v in counted.items() if v} == {k: v for k, v in want.items() if v}, name

    # -- the cases -----------------------------------------------------------------------------------------
    def garbage(self) -> None:
        payload = garbage(self.protocol, self.rng)

        def send():
            with closing(connect(self.venue.fuzz_port)) as sock:
                with suppress(ConnectionResetError, BrokenPipeError):
                    sock.sendall(payload)
                waits_for_close(sock)
        self.run(f"garbage ({len(payload)} bytes)", send, {"malformed": 1})

    def huge_length(self, payload: bytes) -> None:
        def send():
            with closing(connect(self.venue.fuzz_port)) as sock:
                sock.sendall(payload)
                waits_for_close(sock)
        self.run(f"huge length {payload[:16]!r}", send, {"malformed": 1})

    def half_message(self, cut: int, rst: bool) -> None:
        message = new_order(self.client(), self.ids(1)[0])

        def send():
            sock = connect(self.venue.fuzz_port)
            before = self.venue.stats()["gateways"][1]["bytes"]
            sock.sendall(message[:cut])
            if rst:                                          # the venue has read them: they are in its inbox
                self.venue.wait_for(lambda s: s["gateways"][1]["bytes"] == before + cut)
                reset(sock)
            else:
                sock.close()
        self.run(f"{cut} of {len(message)} bytes, then {'a reset' if rst else 'a FIN'}", send,
                 {"disconnects_mid_message": 1, "resets": int(rst)})

    def reset_after_connect(self) -> None:
        def send():
            before = self.venue.stats()["gateways"][1]["connections"]
            sock = connect(self.venue.fuzz_port)
            self.venue.wait_for(lambda s: s["gateways"][1]["connections"] == before + 1)
            reset(sock)
        self.run("a reset at once", send, {"resets": 1})

    def reset_with_replies_unread(self) -> None:
        client = self.client()
        order_id = self.ids(1)[0]

        def send():
            before = self.venue.stats()["gateways"][1]["messages"]
            sock = connect(self.venue.fuzz_port)
            sock.sendall(client.login() + new_order(client, order_id))
            self.venue.wait_for(lambda s: s["gateways"][1]["messages"] == before + 1)
            reset(sock)
        self.run("an order, then a reset with its replies unread", send,
                 {"resets": 1, "messages": 1, "session_messages": int(self.protocol == "ouch42")})

    def cut_at_every_byte(self) -> None:
        """Valid orders, order k split after its byte k (two sends, the venue reading the first before the
        second goes), then one order a byte a send: each one answered, none counted as bad."""
        client = self.client()
        size = len(new_order(client, 1))
        ids = self.ids(size)

        def send():
            with closing(connect(self.venue.fuzz_port)) as sock:
                inbox = bytearray()
                sock.sendall(client.login())
                if self.protocol == "ouch42":
                    self.venue.wait_for(lambda s: s["gateways"][1]["session_messages"] >= 1)
                for cut, order_id in zip(range(1, size), ids):
                    message = new_order(client, order_id)
                    before = self.venue.stats()["gateways"][1]["bytes"]
                    sock.sendall(message[:cut])
                    self.venue.wait_for(lambda s: s["gateways"][1]["bytes"] == before + cut)
                    sock.sendall(message[cut:])
                    assert [(e[0], e[1]) for e in read_events(sock, client, inbox, 2)] == \
                        [("A", order_id), ("F", order_id)]
                message = new_order(client, ids[-1])
                for k in range(size):
                    sock.sendall(message[k:k + 1])
                    time.sleep(0.0005)
                assert [(e[0], e[1]) for e in read_events(sock, client, inbox, 2)] == [("A", ids[-1]), ("F", ids[-1])]
        self.run(f"orders cut at each of their {size - 1} inner bytes, one a byte a send", send,
                 {"messages": size, "session_messages": int(self.protocol == "ouch42")})

    def rejects(self) -> None:
        """Orders the matching engine must reject, each answered with a reject and counted by its reason."""
        client = self.client()
        unknown, (resting, cancel) = self.ids(20), self.ids(2)
        orders = [new_order(client, i, instrument=UNKNOWN_INSTRUMENT) for i in unknown]
        orders.append(new_order(client, resting, price=BID - P, tif=DAY))         # rests...
        orders.append(new_order(client, resting, price=BID - P, tif=DAY))         # ...so this is a duplicate
        orders.append(client.cancel(cancel, 0, 999_999, INSTRUMENT, BUY, 1))      # of no order
        expected = {"reject: unknown instrument": len(unknown), "reject: duplicate id": 1, "reject: unknown order": 1}
        if self.protocol == "binary":                                            # fields the others cannot say
            bad_qty, bad_side = self.ids(2)
            orders.append(new_order(client, bad_qty, qty=-5))
            orders.append(new_order(client, bad_side, side=9))
            expected.update({"reject: bad qty": 1, "reject: bad field": 1})
        rejected = sum(expected.values())

        def send():
            with closing(connect(self.venue.fuzz_port)) as sock:
                sock.sendall(client.login() + b"".join(orders))
                events = read_events(sock, client, bytearray(), rejected + 1)
                assert sorted(kind for kind, *_ in events) == ["A"] + ["R"] * rejected
        self.run("orders to reject", send, {**expected, "messages": len(orders),
                                            "session_messages": int(self.protocol == "ouch42")})

    def never_reads(self) -> None:
        """A client that sends orders as fast as the venue takes them and never reads a reply."""
        client = self.client()
        order_id = self.ids(1)[0]
        burst = b"".join(new_order(client, order_id + k, price=BID) for k in range(200))   # IOC at the bid: 2 replies

        def send():
            sock = connect(self.venue.fuzz_port, rcvbuf=4096)
            sock.setblocking(False)
            sent, deadline, checked = 0, time.monotonic() + 15, 0.0
            try:
                while True:
                    assert time.monotonic() < deadline, f"never dropped: {self.venue.stats()['gateways'][1]}"
                    try:
                        sent += sock.send(burst)
                    except BlockingIOError:
                        select.select([], [sock], [], 0.01)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    if time.monotonic() - checked > 0.05:
                        checked = time.monotonic()
                        if self.venue.stats()["gateways"][1]["slow_consumer_disconnects"]:
                            break
            finally:
                sock.close()
        self.run("a client that never reads", send, {"slow_consumer_disconnects": 1})

    def ouch_longest_packet(self) -> None:
        """A Soup packet of the longest length there is, in good framing but not an OUCH message: answered
        with a reject, the session kept, until the client leaves."""
        client = self.client()
        packet = struct.pack(">H", ouch42.MAX_PACKET) + b"U" + b"O" + b"1" * (ouch42.MAX_PACKET - 2)

        def send():
            with closing(connect(self.venue.fuzz_port)) as sock:
                sock.sendall(client.login() + packet)
                inbox = bytearray()
                while True:                                  # the Login Accepted, then the Rejected
                    inbox += sock.recv(1 << 16)
                    frames = ouch42.frame_soup_stream(bytes(inbox), ouch42.SERVER_PACKETS)
                    if frames.msg_type.size == 2:
                        break
                assert bytes(inbox[frames.offset[1] + 3:frames.offset[1] + 4]) == b"J"
        self.run("the longest Soup packet, not OUCH", send, {"malformed": 1, "session_messages": 1})


PROTOCOL_CASES = {"fix": lambda f: [f.huge_length(p) for p in HUGE_LENGTHS["fix"]],
                  "binary": lambda f: [f.huge_length(p) for p in HUGE_LENGTHS["binary"]],
                  "ouch42": lambda f: [f.huge_length(p) for p in HUGE_LENGTHS["ouch42"]] + [f.ouch_longest_packet()]}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("protocol", ["binary", "fix", "ouch42"])
def test_gateway_fuzz_counts_every_bad_input_and_never_makes_the_other_session_wait(venue_process, protocol):
    started = time.monotonic()
    venue = venue_process(protocol)
    good = GoodClient(protocol, venue.good_port)
    try:
        good.start()
        fuzz, rss_before, rss_after = fuzz_the_venue(protocol, venue)
    finally:
        good.finish()
    assert not good.is_alive(), "the well-behaved client is stuck"
    assert good.failure is None, f"the well-behaved client failed: {good.failure!r}"
    final = venue.quit()                                    # the venue is alive and stops cleanly
    good_stats = final["gateways"][0]
    assert good.rounds >= 5 and good.slowest < REPLY_WITHIN_S
    assert good_stats["messages"] == 3 * good.rounds                   # every order and cancel it sent, answered
    assert {k: good_stats[k] for k in ("malformed", "resets", "disconnects_mid_message",
                                       "slow_consumer_disconnects")} == dict.fromkeys(
        ("malformed", "resets", "disconnects_mid_message", "slow_consumer_disconnects"), 0)
    assert final["rejects"][0] == {}
    assert abs(rss_after - rss_before) < RSS_BUDGET_KB, (rss_before, rss_after)
    print(f"\n{protocol}: {len(fuzz.cases)} fuzz connections, good client {good.rounds} rounds "
          f"(slowest reply {good.slowest * 1000:.1f} ms), venue RSS {rss_before} -> {rss_after} kB, "
          f"{time.monotonic() - started:.1f} s")


def fuzz_the_venue(protocol: str, venue: VenueProcess):
    """Every case once on the fuzz gateway, then clients the good client's gateway refuses: (the Fuzz, the
    venue's RSS after the warm-up and after the fuzz, kB)."""
    venue.wait_for(lambda s: s["gateways"][0]["messages"] >= 30)            # warmed up: trading
    rss_before = rss_kb(venue.process.pid)

    fuzz = Fuzz(protocol, venue, seed=16)
    for _ in range(3):
        fuzz.garbage()
    message_size = len(new_order(fuzz.client(), 1))
    for cut in sorted({1, 2, 3, message_size // 2, message_size - 1}):
        fuzz.half_message(cut, rst=False)
        fuzz.half_message(cut, rst=True)
    fuzz.reset_after_connect()
    fuzz.reset_with_replies_unread()
    fuzz.cut_at_every_byte()
    fuzz.rejects()
    PROTOCOL_CASES[protocol](fuzz)
    fuzz.never_reads()
    refused_before = venue.stats()["gateways"][0]["refused"]
    for _ in range(3):                                      # the good client holds that gateway: refused at once
        with closing(connect(venue.good_port)) as intruder:
            with suppress(ConnectionResetError, BrokenPipeError):
                intruder.sendall(garbage(protocol, fuzz.rng))
            waits_for_close(intruder)
    venue.wait_for(lambda s: s["gateways"][0]["refused"] == refused_before + 3)
    return fuzz, rss_before, rss_kb(venue.process.pid)
