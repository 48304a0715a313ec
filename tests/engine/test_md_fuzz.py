"""MD fuzz (issue 16): the real engine process, one venue on 127.0.0.1, fed about 3 s of malformed market
data at about 40k datagrams/s in each protocol a venue can use (wm, itch50), valid datagrams interleaved.
The engine stays up and still handles a valid datagram after the storm, stops cleanly, counts every bad
datagram by its reason (exactly: the expected counts come from how each datagram was made, or for ITCH from
the plain-Python reference book of tests/engine/itch_day.py, and the kernel's drop count of the engine's
socket says whether all of them arrived), and its RSS stays within 50 MB of where it was after a warm-up.

Then the defects this fuzz found, each as its smallest input, in-process."""
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest

from engine.book import ASK, BID, BookError, Books, DatagramError, ItchOrders, L2Book, decode_datagram, decode_itch
from engine.lifeline import child_environment
from engine.messages import MARKET_UPDATE
from engine.protocol import itch50, md
from engine.queues import Queue
from itch_day import ReferenceL3Book
from test_book import DictBook
from test_engine_e2e import MiniVenue, free_port

HOST = "127.0.0.1"
VENUE, INSTRUMENT = 1, 7
TICK = 10**6                                    # 0.01
CENTER = 100 * 10**8                            # 100.00
RATE = 40_000                                   # datagrams/s
STORM_S = 3.0
WARM_UP = 4_000                                 # datagrams before the RSS is first read
BATCH = 200                                     # sends between looks at the clock
RSS_BUDGET_KB = 50 << 10
LADDER_MAX_LEVELS = 1 << 20                     # engine/_book.c: a book's levels span at most half of it
FAR_TICKS = 1 << 21                             # "far": beyond any window the ladder takes
PROBE_QTY = 777_777                             # the trade that marks a probe's MarketUpdate
WAIT_S = 20.0


# -- the engine, as a process -------------------------------------------------------------------------------

def udp_socket_row(port: int) -> dict | None:
    """The engine's socket in /proc/net/udp: its receive queue (bytes) and the datagrams the kernel dropped."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                return {"rx_queue": int(fields[4].split(":")[1], 16), "drops": int(fields[-1])}
    return None


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class EngineProcess:
    """`python -m engine` with one venue (a MiniVenue that would fill its orders), its feed on 127.0.0.1."""

    def __init__(self, tmp_path: Path, md_protocol: str):
        self.name = f"md-fuzz-{md_protocol}-{os.getpid()}"
        self.venue = MiniVenue()
        self.venue.start()
        self.feed = free_port(socket.SOCK_DGRAM)
        config = tmp_path / "engine.toml"
        config.write_text(f"""
[engine]
name = "{self.name}"
[[venues]]
id = {VENUE}
feed = "{HOST}:{self.feed}"
gateway = "{HOST}:{self.venue.port}"
md = "{md_protocol}"
[[instruments]]
venue = {VENUE}
id = {INSTRUMENT}
tick = {TICK}
[[models]]
type = "imbalance-taker"
venue = {VENUE}
instrument = {INSTRUMENT}
threshold_pct = 100
""")                                                # a model that never trades: the fuzz is the feed's
        self.stderr = open(tmp_path / "engine.err", "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)],
                                        stdout=subprocess.PIPE, stderr=self.stderr, env=child_environment())
        self.md_queue = None

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while udp_socket_row(self.feed) is None:
            assert self.process.poll() is None, f"the engine exited: {self.error()}"
            assert time.monotonic() < deadline, "the engine never bound its feed"
            time.sleep(0.02)
        deadline = time.monotonic() + WAIT_S
        while self.md_queue is None:
            with suppress(Exception):
                self.md_queue = Queue.attach(f"{self.name}.md", MARKET_UPDATE.dtype)
            assert time.monotonic() < deadline, "the engine's md queue never appeared"
            time.sleep(0.02)

    def handles(self, sender: socket.socket, probe: bytes, seq: int) -> None:
        """Send a valid datagram and wait until the engine has published its MarketUpdate: the engine is
        alive, and everything sent before the probe has been handled."""
        consumer = self.md_queue.consumer()
        sender.sendto(probe, (HOST, self.feed))
        deadline = time.monotonic() + WAIT_S
        while True:
            raw = consumer.poll_bytes()
            if raw is None:
                assert self.process.poll() is None, f"the engine died: {self.error()}"
                assert time.monotonic() < deadline, "the engine never handled the probe"
                time.sleep(0.0005)
                continue
            update = np.frombuffer(raw, MARKET_UPDATE.dtype)[0]
            if update["md_seq"] == seq and update["trade_qty"] == PROBE_QTY:
                return

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=WAIT_S)
        assert self.process.returncode == 0, self.error()
        return json.loads(out)

    def error(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def close(self) -> None:
        if self.md_queue is not None:
            self.md_queue.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT_S)
        self.process.stdout.close()
        for leftover in Path("/dev/shm").glob(f"wirelab-{self.name}.*"):
            leftover.unlink(missing_ok=True)
        self.venue.stop = True
        self.venue.join(timeout=5)
        self.venue.server.close()
        self.stderr.close()


@pytest.fixture
def engine_process(tmp_path):
    started = []

    def start(md_protocol: str) -> EngineProcess:
        started.append(EngineProcess(tmp_path, md_protocol))
        return started[-1]
    yield start
    for engine in started:
        engine.close()


def send_paced(sock: socket.socket, payloads: list[bytes], port: int, rate: float, pid: int) -> tuple[float, int]:
    """Send at `rate` datagrams/s, BATCH at a time with a sleep to hold the rate: (the rate achieved, the
    highest RSS of process `pid` seen meanwhile, in kB)."""
    address, sendto = (HOST, port), sock.sendto
    start = last_look = time.perf_counter()
    peak = rss_kb(pid)
    for at in range(0, len(payloads), BATCH):
        for payload in payloads[at:at + BATCH]:
            sendto(payload, address)
        now = time.perf_counter()
        if now - last_look > 0.1:
            peak, last_look = max(peak, rss_kb(pid)), now
        ahead = start + (at + BATCH) / rate - now
        if ahead > 0:
            time.sleep(ahead)
    return len(payloads) / (time.perf_counter() - start), peak


class Draws:
    """Uniform numbers from a seeded numpy generator, drawn in bulk (a few million a storm: each draw must
    cost next to nothing)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

        def floats():
            while True:
                yield from self.rng.random(1 << 16).tolist()
        self.r = floats().__next__               # a float in [0, 1)
        self.pool = self.rng.bytes(1 << 20)

    def i(self, low: int, high: int) -> int:
        """An integer in [low, high)."""
        return low + int(self.r() * (high - low))

    def pick(self, options):
        return options[int(self.r() * len(options))]

    def bytes(self, n: int) -> bytes:
        """n random bytes: a slice of a pool drawn once."""
        at = int(self.r() * (len(self.pool) - n))
        return self.pool[at:at + n]


def weighted(kinds: dict) -> list[tuple[float, str]]:
    """Cumulative weights for kinds {name: weight}."""
    total, edge, out = sum(kinds.values()), 0.0, []
    for name, weight in kinds.items():
        edge += weight / total
        out.append((edge, name))
    out[-1] = (1.0, out[-1][1])
    return out


def draw_kind(draws: Draws, table) -> str:
    x = draws.r()
    return next(name for edge, name in table if x < edge)


# -- WM: datagrams, each made to be dropped for one reason or to be used -------------------------------------

HEADER, UPDATE, TRADE = md.HEADER.struct, md.UPDATE.struct, md.TRADE.struct
WM_KINDS = weighted({
    "valid": 20, "gap": 2, "duplicate": 2, "backwards": 2, "far delete": 1,
    "random bytes": 8, "truncated": 12, "extended": 3, "wrong magic": 5, "wrong version or type": 5,
    "length field": 6, "counts": 6, "too few updates": 4, "bid and ask swapped": 4, "unknown instrument": 8,
    "bad entry": 8, "far price": 6})
INT64_MAX = (1 << 63) - 1


class WmFuzz:
    """The datagrams and what the engine must make of each: None (used) or the reason it is dropped."""

    def __init__(self, seed: int):
        self.d = Draws(seed)
        self.seq, self.mid, self.cut = 0, CENTER, 0
        self.payloads: list[bytes] = []
        self.expected: list[str | None] = []
        self.seqs: list[int] = []                # of the datagrams used, in order: the book follows them

    def entries(self):
        """A valid datagram's entries: the best bid and ask about a mid that wanders, deeper levels set or
        deleted, trades."""
        r = self.d.r
        self.mid = min(max(self.mid + (int(r() * 3) - 1) * TICK, CENTER - 1000 * TICK), CENTER + 1000 * TICK)
        bid = self.mid - int(r() * 3) * TICK
        ask = bid + (1 + int(r() * 3)) * TICK
        updates = [(md.BID, md.SET, bid, 1 + int(r() * 999)), (md.ASK, md.SET, ask, 1 + int(r() * 999))]
        for _ in range(int(r() * 5)):
            depth = (1 + int(r() * 19)) * TICK
            if r() < 0.5:
                updates.append((md.BID, md.SET if r() < 0.7 else md.DELETE, bid - depth, 1 + int(r() * 999)))
            else:
                updates.append((md.ASK, md.SET if r() < 0.7 else md.DELETE, ask + depth, 1 + int(r() * 999)))
        trades = [(self.mid, 1 + int(r() * 99), int(r() * 3)) for _ in range(int(r() * 3))]
        return updates, trades

    @staticmethod
    def encode(seq, updates, trades, venue=VENUE, instrument=INSTRUMENT, magic=b"WM", version=md.VERSION,
               msg_type=md.MSG_TYPE_MD, length=None, n_updates=None, n_trades=None) -> bytes:
        body = b"".join(UPDATE.pack(*u) for u in updates) + b"".join(TRADE.pack(*t) for t in trades)
        size = md.HEADER_SIZE + len(body)
        return HEADER.pack(magic, version, msg_type, size if length is None else length, venue, seq, instrument,
                           len(updates) if n_updates is None else n_updates,
                           len(trades) if n_trades is None else n_trades, seq) + body

    def add(self, payload: bytes, reason: str | None, seq: int | None = None) -> None:
        self.payloads.append(payload)
        self.expected.append(reason)
        if reason is None:
            self.seqs.append(seq)

    def valid(self, seq: int, trades=None) -> None:
        updates, drawn = self.entries()
        self.add(self.encode(seq, updates, drawn if trades is None else trades), None, seq)

    def probe(self) -> tuple[bytes, int]:
        self.seq += 1
        updates, _ = self.entries()
        payload = self.encode(self.seq, updates, [(self.mid, PROBE_QTY, 0)])
        self.add(payload, None, self.seq)
        return payload, self.seq

    def next(self) -> None:
        d = self.d
        kind = draw_kind(d, WM_KINDS)
        if kind == "valid":
            self.seq += 1
            return self.valid(self.seq)
        if kind == "gap":
            self.seq += d.i(2, 50)
            return self.valid(self.seq)
        if kind == "duplicate":
            return self.valid(self.seq)
        if kind == "backwards":
            return self.valid(max(self.seq - d.i(1, 20), 0))
        if kind == "far delete":                        # nothing is there: nothing to do, the datagram is fine
            self.seq += 1
            updates, trades = self.entries()
            updates.append((d.pick((md.BID, md.ASK)), md.DELETE, CENTER + d.i(FAR_TICKS, 1 << 40) * TICK, 5))
            return self.add(self.encode(self.seq, updates, trades), None, self.seq)
        if kind == "random bytes":
            payload = bytearray(d.bytes(d.i(0, 120)))
            if payload[:2] == b"WM":
                payload[0] = ord("X")
            return self.add(bytes(payload), "short datagram" if len(payload) < md.HEADER_SIZE else "unknown magic")
        updates, trades = self.entries()
        seq = self.seq + 1                              # dropped: no seq is used up
        if kind == "truncated":                         # every cut, in turn
            whole = self.encode(seq, updates, trades)
            self.cut = (self.cut + 1) % 200
            cut = self.cut % len(whole)
            return self.add(whole[:cut], "short datagram" if cut < md.HEADER_SIZE else "length mismatch")
        if kind == "extended":
            return self.add(self.encode(seq, updates, trades) + d.bytes(d.i(1, 30)), "length mismatch")
        if kind == "wrong magic":
            magic = d.pick((b"MW", b"wm", b"\0\0", b"W\0", b"\xff\xff"))
            return self.add(self.encode(seq, updates, trades, magic=magic), "unknown magic")
        if kind == "wrong version or type":
            version, msg_type = d.pick(((0, 1), (2, 1), (255, 1), (1, 0), (1, 2), (1, 255)))
            return self.add(self.encode(seq, updates, trades, version=version, msg_type=msg_type),
                            "unknown version or type")
        size = md.md_length(len(updates), len(trades))
        if kind == "length field":
            length = d.pick((0, 1, 0xFFFF, size - 24, size + 24, size - 1))
            return self.add(self.encode(seq, updates, trades, length=length), "length mismatch")
        if kind == "counts":
            n_updates, n_trades = d.pick(((0, None), (1, None), (0xFFFF, None), (len(updates) + 1, None),
                                          (None, 0xFFFF), (None, len(trades) + 1)))
            return self.add(self.encode(seq, updates, trades, n_updates=n_updates, n_trades=n_trades),
                            "length mismatch")
        if kind == "too few updates":                   # the lengths agree; the best bid and ask are missing
            return self.add(self.encode(seq, updates[:d.i(0, 2)], trades), "too few updates")
        if kind == "bid and ask swapped":
            updates[0], updates[1] = updates[1], updates[0]
            return self.add(self.encode(seq, updates, trades), "best bid and ask not first")
        if kind == "unknown instrument":
            venue, instrument = d.pick(((VENUE, 0), (VENUE, 8), (VENUE, 0xFFFFFFFF), (0, INSTRUMENT),
                                        (2, INSTRUMENT), (0xFFFF, INSTRUMENT), (VENUE, d.i(8, 1 << 32))))
            return self.add(self.encode(seq, updates, trades, venue=venue, instrument=instrument),
                            "unknown instrument")
        if kind == "bad entry":                         # the entries before it stay applied
            at = d.i(2, len(updates) + 1)
            side, _action, price, qty = (updates + [(md.BID, md.SET, self.mid - TICK, 5)])[at]
            bad = d.pick(("side", "qty", "grid"))
            if bad == "side":
                entry = (d.pick((0, 3, 255)), md.SET, price, qty)
            elif bad == "qty":
                entry = (side, md.SET, price, -d.i(1, 1 << 40))
            else:
                entry = (side, d.pick((md.SET, md.DELETE)), price + d.i(1, TICK), qty)
            return self.add(self.encode(seq, updates[:at] + [entry] + updates[at + 1:], trades), "bad book update")
        if kind == "far price":                         # on the tick grid, too far from the book for its ladder
            far = d.pick((CENTER + d.i(FAR_TICKS, 1 << 40) * TICK, CENTER - d.i(FAR_TICKS, 1 << 40) * TICK,
                          INT64_MAX // TICK * TICK, -(INT64_MAX // TICK * TICK)))
            updates.insert(d.i(2, len(updates) + 1), (d.pick((md.BID, md.ASK)), md.SET, far, d.i(1, 1000)))
            return self.add(self.encode(seq, updates, trades), "price out of range")
        raise AssertionError(kind)

    def summary(self) -> dict:
        """What the engine must report: datagrams used, dropped by reason, and the book's count of its feed's
        sequence (engine/_book.c count_sequence: the highest seq so far only moves forward)."""
        gaps = duplicates = regressions = 0
        last = None
        for seq in self.seqs:
            if last is None or seq > last:
                gaps += 0 if last is None else seq - last - 1
                last = seq
            elif seq == last:
                duplicates += 1
            else:
                regressions += 1
        return {"md_handled": len(self.seqs), "md_dropped": dict(Counter(r for r in self.expected if r)),
                "md_gaps": gaps, "md_duplicates": duplicates, "md_regressions": regressions}


# -- ITCH 5.0 in MoldUDP64: packets, and what the plain-Python reference book makes of them ----------------

PRICE4 = CENTER // itch50.PRICE_SCALE
GRID4 = TICK // itch50.PRICE_SCALE              # the tick in Price(4)
SESSION = b"WIRELAB001"
MOLD = itch50.MOLD_HEADER.struct
ADD, EXECUTED, EXECUTED_PRICE, CANCEL, DELETE, REPLACE, TRADE_P, SYSTEM = (layout.struct for layout in (
    itch50.ADD_ORDER, itch50.ORDER_EXECUTED, itch50.ORDER_EXECUTED_PRICE, itch50.ORDER_CANCEL, itch50.ORDER_DELETE,
    itch50.ORDER_REPLACE, itch50.TRADE, itch50.SYSTEM_EVENT))
STAMP = bytes(6)
PRINTABLE = bytes(range(0x20, 0x7F))
STOCK = b"I0000007"
ITCH_KINDS = weighted({
    "valid": 25, "gap": 2, "duplicate": 2, "backwards": 2, "heartbeat": 1,
    "short": 3, "session": 4, "truncated": 10, "count beyond": 4, "past datagram": 4, "zero length": 3,
    "trailing bytes": 3, "heartbeat with bytes": 2, "unknown type": 4, "wrong length": 4, "unknown instrument": 5,
    "unknown ref": 6, "replace unknown": 3, "duplicate ref": 3, "bad side": 3, "off grid": 4, "excess shares": 3,
    "far add": 3, "far replace": 2})


class FuzzReference(ReferenceL3Book):
    """tests/engine/itch_day.py's reference L3 book, with what it leaves to the decoder's caller: packets that
    are short, not MoldUDP64 (a session that is not printable) or heartbeats (bytes after one are counted),
    the feed's sequence, and the ladder's bound (a price it refuses: the fuzz's prices lie either within
    a few thousand ticks of CENTER, with live orders there all along, or FAR_TICKS and more from it)."""

    def __init__(self):
        super().__init__({INSTRUMENT: TICK})
        self.packets = 0
        self.started, self.next_seq, self.last_seq = False, 0, 0
        self.gaps = self.duplicates = self.regressions = 0

    def _add(self, locate, ref, side, shares, price) -> bool:
        if price % self.ticks[locate] == 0 and (locate, ref) not in self.orders \
                and abs(price - CENTER) >= FAR_TICKS * TICK:
            self.dropped["book refused the price"] += 1
            return False
        return super()._add(locate, ref, side, shares, price)

    def datagram(self, payload: bytes) -> None:
        if len(payload) < MOLD.size:
            self.dropped["short datagram"] += 1
            return
        _session, seq, count = MOLD.unpack_from(payload)
        if payload[:10].translate(None, PRINTABLE):      # bytes left that are not printable ASCII
            self.dropped["session not printable"] += 1
            return
        if count in (itch50.HEARTBEAT, itch50.END_OF_SESSION):
            if len(payload) > MOLD.size:
                self.dropped["bytes after messages"] += 1
            return
        self.packets += 1
        end = min(seq + count, (1 << 64) - 1)           # engine/_book.c follow_sequence
        if self.started and seq > self.next_seq:
            self.gaps += seq - self.next_seq
        elif self.started and seq < self.next_seq:
            self.duplicates += seq == self.last_seq
            self.regressions += seq != self.last_seq
        if not self.started or end > self.next_seq:
            self.next_seq = end
        self.started, self.last_seq = True, seq
        self.packet(payload)

    def summary(self) -> dict:
        return {"md_handled": self.packets, "md_dropped": {k: v for k, v in self.dropped.items() if v},
                "md_gaps": self.gaps, "md_duplicates": self.duplicates, "md_regressions": self.regressions}


class ItchFuzz:
    """Packets, each a few messages: valid ones, or one made to be dropped (or cut) for one reason. Each goes
    through the reference as it is made, so the next one knows which orders are live."""

    def __init__(self, seed: int):
        self.d = Draws(seed)
        self.reference = FuzzReference()
        self.seq, self.next_ref = 1, 1
        self.candidates: list[int] = []                  # refs the fuzz added, live or gone (dropped lazily)
        self.touched: set[int] = set()                   # refs the packet being made already names
        self.payloads: list[bytes] = []
        self.bad = 0
        self.cut = 0
        for ref in range(1, 11):                        # orders nobody touches: the book is never empty
            side = itch50.BUY if ref % 2 else itch50.SELL
            self.emit([self.add_message(ref, side, PRICE4 + (-ref if side == itch50.BUY else ref) * GRID4)],
                      bad=False)
        self.next_ref = 11

    # messages
    def price(self, side: bytes) -> int:
        offset = self.d.i(1, 30) * GRID4
        return PRICE4 - offset if side == itch50.BUY else PRICE4 + offset

    def add_message(self, ref, side=None, price=None, shares=None, locate=INSTRUMENT) -> bytes:
        side = side or self.d.pick((itch50.BUY, itch50.SELL))
        return ADD.pack(b"A", locate, 0, STAMP, ref, side, shares or self.d.i(1, 1000), STOCK,
                        self.price(side) if price is None else price)

    def new_ref(self) -> int:
        ref, self.next_ref = self.next_ref, self.next_ref + 1
        self.candidates.append(ref)
        return ref

    def new_add(self) -> bytes:
        return self.add_message(self.new_ref())

    def live(self) -> tuple[int, list] | None:
        """A live order the fuzz may touch, not yet named in the packet being made: (ref, [side, price, shares])."""
        candidates, orders = self.candidates, self.reference.orders
        for _ in range(4):
            if not candidates:
                return None
            at = int(self.d.r() * len(candidates))
            ref = candidates[at]
            order = orders.get((INSTRUMENT, ref))
            if order is None and ref < self.next_ref - 8:    # gone (or never added): forget it
                candidates[at] = candidates[-1]
                candidates.pop()
            elif order is not None and ref not in self.touched:
                self.touched.add(ref)
                return ref, order
        return None

    def valid_message(self) -> bytes:
        d = self.d
        x = d.r()
        found = self.live() if x >= 0.4 or len(self.candidates) > 3000 else None
        if found is None:
            return self.new_add()
        ref, (side, price, shares) = found
        if x < 0.55:
            return EXECUTED.pack(b"E", INSTRUMENT, 0, STAMP, ref, d.i(1, shares + 1), self.next_ref)
        if x < 0.62:
            return EXECUTED_PRICE.pack(b"C", INSTRUMENT, 0, STAMP, ref, d.i(1, shares + 1), self.next_ref,
                                       d.pick((b"Y", b"N")), PRICE4)
        if x < 0.72:
            return CANCEL.pack(b"X", INSTRUMENT, 0, STAMP, ref, d.i(1, shares + 1))
        if x < 0.88:
            return DELETE.pack(b"D", INSTRUMENT, 0, STAMP, ref)
        if x < 0.95:
            return REPLACE.pack(b"U", INSTRUMENT, 0, STAMP, ref, self.new_ref(), d.i(1, 1000),
                                self.price(itch50.BUY if side == BID else itch50.SELL))
        if x < 0.98:
            return TRADE_P.pack(b"P", INSTRUMENT, 0, STAMP, 0, b"B", d.i(1, 100), STOCK, PRICE4, self.next_ref)
        return SYSTEM.pack(b"S", 0, 0, STAMP, b"O")

    # packets
    def packet(self, messages: list[bytes], seq: int | None = None, count: int | None = None) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + len(messages)
        return (MOLD.pack(SESSION, seq, len(messages) if count is None else count)
                + b"".join(struct.pack(">H", len(m)) + m for m in messages))

    def emit(self, messages: list[bytes], bad: bool, payload: bytes | None = None) -> None:
        """One packet (of `messages`, or `payload` as it is) through the reference; a bad one must be dropped or
        counted somewhere, a valid one nowhere."""
        payload = self.packet(messages) if payload is None else payload
        before = sum(self.reference.dropped.values())
        self.reference.datagram(payload)
        dropped = sum(self.reference.dropped.values()) - before
        assert (dropped > 0) == bad, (bad, payload[:60], dict(self.reference.dropped))
        self.payloads.append(payload)
        self.bad += bad

    def probe(self) -> tuple[bytes, int]:
        self.seq += 1_000                               # a seq no earlier packet used
        seq = self.seq
        self.emit([TRADE_P.pack(b"P", INSTRUMENT, 0, STAMP, 0, b"B", PROBE_QTY, STOCK, PRICE4, 1)], bad=False)
        return self.payloads[-1], seq

    def next(self) -> None:
        d = self.d
        self.touched.clear()
        kind = draw_kind(d, ITCH_KINDS)
        good = [self.valid_message() for _ in range(d.i(0, 3))]
        if kind == "valid":
            return self.emit(good or [self.valid_message()], bad=False)
        if kind in ("gap", "duplicate", "backwards"):
            seq = {"gap": self.seq + d.i(1, 50), "duplicate": max(self.seq - 1, 0),
                   "backwards": max(self.seq - d.i(2, 40), 0)}[kind]
            if kind == "gap":
                self.seq = seq + len(good) + 1
            good.append(self.valid_message())
            return self.emit(good, bad=False, payload=self.packet(good, seq=seq))
        if kind == "heartbeat":
            return self.emit([], bad=False, payload=MOLD.pack(SESSION, self.seq, itch50.HEARTBEAT))
        if kind == "short":
            return self.emit([], bad=True, payload=d.bytes(d.i(0, MOLD.size)))
        if kind == "session":
            return self.emit([], bad=True, payload=bytes([d.i(0, 0x20)]) + d.bytes(d.i(MOLD.size - 1, 200)))
        if kind == "truncated":                          # every cut in turn; the messages before it are used
            whole = self.packet(good + [self.valid_message()])
            self.cut = (self.cut + 1) % 150
            return self.emit([], bad=True, payload=whole[:self.cut % len(whole)])
        if kind == "count beyond":                       # the feed goes on after the messages it claimed
            count = min(len(good) + d.pick((1, 2, 100, 0xFFFE)), 0xFFFE)
            seq, self.seq = self.seq, self.seq + count
            return self.emit([], bad=True, payload=self.packet(good, seq=seq, count=count))
        if kind == "past datagram":
            payload = bytearray(self.packet(good + [self.valid_message()]))
            at = MOLD.size + sum(2 + len(m) for m in good)          # the last block's length field
            payload[at:at + 2] = struct.pack(">H", d.pick((0xFFFF, len(payload) - at - 1)))
            return self.emit([], bad=True, payload=bytes(payload))
        if kind == "zero length":
            good.insert(d.i(0, len(good) + 1), b"")
            return self.emit(good, bad=True)
        if kind == "trailing bytes":
            return self.emit([], bad=True, payload=self.packet(good + [self.valid_message()]) + d.bytes(d.i(1, 30)))
        if kind == "heartbeat with bytes":
            count = d.pick((itch50.HEARTBEAT, itch50.END_OF_SESSION))
            return self.emit([], bad=True, payload=MOLD.pack(SESSION, self.seq, count) + d.bytes(d.i(1, 60)))
        bad = self.bad_message(kind)
        good.insert(d.i(0, len(good) + 1), bad)
        return self.emit(good, bad=True)

    def bad_message(self, kind: str) -> bytes:
        d = self.d
        if kind == "unknown type":
            return bytes([d.pick(b"Zaz\x00\xffBQ")]) + d.bytes(d.i(0, 40))
        if kind == "wrong length":
            message = self.add_message(self.next_ref + 10**9)
            return message[:-1] if d.r() < 0.5 else message + b"\0"
        if kind == "unknown instrument":
            locate = d.pick((0, 8, 0xFFFF))
            return d.pick((self.add_message(self.next_ref + 10**9, locate=locate),
                           TRADE_P.pack(b"P", locate, 0, STAMP, 0, b"S", 5, STOCK, PRICE4, 1),
                           DELETE.pack(b"D", locate, 0, STAMP, 1)))
        never = 10**12 + d.i(0, 10**6)                  # a ref no add used
        if kind == "unknown ref":
            return d.pick((EXECUTED.pack(b"E", INSTRUMENT, 0, STAMP, never, 5, 1),
                           EXECUTED_PRICE.pack(b"C", INSTRUMENT, 0, STAMP, never, 5, 1, b"Y", PRICE4),
                           CANCEL.pack(b"X", INSTRUMENT, 0, STAMP, never, 5),
                           DELETE.pack(b"D", INSTRUMENT, 0, STAMP, never)))
        if kind == "replace unknown":
            return REPLACE.pack(b"U", INSTRUMENT, 0, STAMP, never, never + 1, 5, PRICE4)
        if kind == "duplicate ref":
            return self.add_message(d.i(1, 11))          # one of the orders nobody touches
        if kind == "bad side":
            return self.add_message(self.next_ref + 10**9, side=d.pick((b"X", b"\0", b"b")))
        if kind == "off grid":
            found = self.live()
            if found is not None and d.r() < 0.5:
                return REPLACE.pack(b"U", INSTRUMENT, 0, STAMP, found[0], found[0], 5, PRICE4 + d.i(1, GRID4))
            return self.add_message(self.next_ref + 10**9, price=PRICE4 + d.i(1, GRID4))
        if kind == "excess shares":
            ref = d.i(1, 11)
            shares = self.reference.orders[INSTRUMENT, ref][2]
            return d.pick((EXECUTED.pack(b"E", INSTRUMENT, 0, STAMP, ref, shares + d.i(1, 1000), 1),
                           CANCEL.pack(b"X", INSTRUMENT, 0, STAMP, ref, shares + 1)))
        far = PRICE4 + d.i(FAR_TICKS, (0xFFFFFFFF - PRICE4) // GRID4) * GRID4
        if kind == "far add":                             # refused: the ref is never live
            return self.add_message(self.new_ref(), price=far)
        if kind == "far replace":                         # the original goes, the new order is refused
            found = self.live()
            if found is None:                             # none to spare: one of its own, in a packet before
                self.emit([self.new_add()], bad=False)
                found = (self.next_ref - 1,)
            new_ref, self.next_ref = self.next_ref, self.next_ref + 1
            return REPLACE.pack(b"U", INSTRUMENT, 0, STAMP, found[0], new_ref, 5, far)
        raise AssertionError(kind)

    def summary(self) -> dict:
        return self.reference.summary()


# -- the fuzz ------------------------------------------------------------------------------------------------

def storm(protocol: str, seed: int):
    """(payloads of the warm-up, its probe, payloads of the storm, its probe, what the engine must report,
    bad datagrams)."""
    fuzz = WmFuzz(seed) if protocol == "wm" else ItchFuzz(seed)
    while len(fuzz.payloads) < WARM_UP:
        fuzz.next()
    warm_up = list(fuzz.payloads)
    first_probe = fuzz.probe()
    start = len(fuzz.payloads)
    while len(fuzz.payloads) - start < RATE * STORM_S:
        fuzz.next()
    payloads = fuzz.payloads[start:]
    last_probe = fuzz.probe()
    bad = sum(r is not None for r in fuzz.expected) if protocol == "wm" else fuzz.bad
    return warm_up, first_probe, payloads, last_probe, fuzz.summary(), bad


@pytest.mark.parametrize("protocol", ["wm", "itch50"])
def test_a_storm_of_bad_market_data_is_counted_by_reason_and_leaves_the_engine_well(engine_process, protocol):
    started = time.monotonic()
    engine = engine_process(protocol)
    warm_up, first_probe, payloads, last_probe, expected, bad = storm(protocol, seed=16)   # while it starts
    engine.wait_until_listening()
    pid = engine.process.pid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        send_paced(sender, warm_up, engine.feed, RATE, pid)
        engine.handles(sender, *first_probe)
        rss_before = rss_kb(pid)
        rate, peak = send_paced(sender, payloads, engine.feed, RATE, pid)
        engine.handles(sender, *last_probe)                  # alive, and every datagram before it handled
    rss_after = rss_kb(pid)
    kernel = udp_socket_row(engine.feed)
    summary = engine.stop()                                  # stops cleanly, exit 0
    sent = len(warm_up) + len(payloads) + 2
    received = sent - kernel["drops"]
    got = {key: summary[key] for key in ("md_handled", "md_dropped", "md_gaps", "md_duplicates", "md_regressions")}
    print(f"\n{protocol}: {sent} datagrams ({bad} bad) at {rate:,.0f}/s, kernel drops {kernel['drops']}, "
          f"engine RSS {rss_before} -> {rss_after} kB (peak {peak}), counted {got['md_dropped']}, "
          f"{time.monotonic() - started:.1f} s")
    assert rss_after - rss_before < RSS_BUDGET_KB and peak - rss_before < RSS_BUDGET_KB, (rss_before, rss_after, peak)
    assert sum(got["md_dropped"].values()) >= bad - kernel["drops"]          # a bad one counts once or more
    if kernel["drops"] == 0:                                 # all arrived: every count exact
        assert got == expected
    else:                                                    # some lost on loopback: the counts still add up
        assert got["md_handled"] <= expected["md_handled"]
        if protocol == "wm":                                 # each datagram is used or dropped for one reason
            assert got["md_handled"] + sum(got["md_dropped"].values()) == received
            assert all(n <= expected["md_dropped"].get(reason, 0) for reason, n in got["md_dropped"].items())


# -- the defects found, each as its smallest input --------------------------------------------------------------

def wm_books() -> Books:
    return Books({(VENUE, INSTRUMENT)}, lambda venue, instrument: TICK)


def test_a_datagram_without_the_best_bid_and_ask_first_is_dropped():
    """Found: a header-only datagram (n_updates 0, length 32) was used, made a book and a MarketUpdate."""
    books = wm_books()
    for updates in ((), ((md.BID, md.SET, CENTER, 5),)):
        with pytest.raises(DatagramError, match="too few updates"):
            decode_datagram(WmFuzz.encode(1, updates, ()), books, 0, 0)
    with pytest.raises(DatagramError, match="best bid and ask not first"):
        decode_datagram(WmFuzz.encode(1, ((md.ASK, md.SET, CENTER + TICK, 5), (md.BID, md.SET, CENTER, 5)), ()),
                        books, 0, 0)
    assert not books


def test_a_price_too_far_from_the_book_is_refused_and_the_book_is_unchanged():
    """Found: one on-grid price 2**28 ticks from the book grew its ladder to 2**30 levels (1.3 s, 16 GiB of
    address space), one 2**30 away took 5 s to fail; levels near both ends of a big window made every later
    re-centre touch the pages between them. A delete that far re-centred as well."""
    books = wm_books()
    touch = WmFuzz.encode(1, ((md.BID, md.SET, CENTER, 5), (md.ASK, md.SET, CENTER + TICK, 7)), ())
    decode_datagram(touch, books, 0, 0)
    book = books[VENUE, INSTRUMENT]
    window = book.window
    for far in (CENTER + FAR_TICKS * TICK, CENTER + (1 << 40) * TICK, INT64_MAX // TICK * TICK,
                -(INT64_MAX // TICK * TICK)):
        with pytest.raises(DatagramError, match="price out of range"):
            decode_datagram(WmFuzz.encode(2, ((md.BID, md.SET, CENTER, 5), (md.ASK, md.SET, CENTER + TICK, 7),
                                              (md.ASK, md.SET, far, 1)), ()), books, 0, 0)
        with pytest.raises(BookError, match="too far"):
            book.set_level(BID, far, 1)
        book.set_level(ASK, far, 0)                      # no level there: nothing to do
        assert book.window == window and book.top() == (CENTER, 5, CENTER + TICK, 7)
    assert book.datagrams == 1


def test_the_ladder_steps_on_the_grid_its_prices_use_and_matches_a_dict_book():
    """A book with a finer tick than its prices use (tick 1, prices in cents) holds them in a small window;
    prices between its steps make it finer, up to the ladder's bound, past which a price is refused with the
    book unchanged. Checked against the plain dict book after every update."""
    rng = np.random.default_rng(160)
    book, reference = L2Book(1, window=64), DictBook()
    mid, refused = CENTER, 0
    for step in range(20_000):
        unit = TICK if step < 8_000 else TICK // 4 if step < 14_000 else 1     # the grid gets finer
        mid += int(rng.integers(-2, 3)) * TICK
        side = int(rng.integers(BID, ASK + 1))
        offset = int(rng.geometric(0.2)) * unit
        price = mid - offset if side == BID else mid + offset
        if rng.random() < 0.01:
            price = mid + int(rng.integers(-1, 2)) * (1 << int(rng.integers(20, 40))) * TICK
        qty = 0 if rng.random() < 0.3 else int(rng.integers(1, 1000))
        before = (book.top(), book.depth(BID, 10), book.depth(ASK, 10), book.grid, book.window)
        try:
            book.set_level(side, price, qty)
        except BookError as exc:
            assert "too far" in str(exc) and qty
            assert (book.top(), book.depth(BID, 10), book.depth(ASK, 10), book.grid, book.window) == before
            refused += 1
            continue
        reference.set_level(side, price, qty)
        assert book.best_bid() == reference.best(BID) and book.best_ask() == reference.best(ASK), step
        if step % 97 == 0:
            assert book.depth(BID, 8) == reference.depth(BID, 8) and book.depth(ASK, 8) == reference.depth(ASK, 8)
        if step == 7_999:
            assert book.grid == TICK and book.window <= 1 << 14      # cents: not 10**6 levels a cent
    assert refused > 50 and book.window <= LADDER_MAX_LEVELS and book.crossed_fixes == reference.crossed_fixes
    assert math.gcd(book.grid, TICK // 4) == book.grid


def test_bytes_that_are_not_moldudp64_are_counted_and_leave_the_feed_sequence_alone():
    """Found: 20 random bytes were walked as a MoldUDP64 packet, their seq followed: one with a seq near 2**63
    made every later packet a regression. A heartbeat (or end of session) with bytes after it was not counted."""
    books, orders = Books({(VENUE, INSTRUMENT)}, lambda venue, instrument: TICK), ItchOrders(16)
    add = ADD.pack(b"A", INSTRUMENT, 0, STAMP, 1, b"B", 5, STOCK, PRICE4)
    decode_itch(MOLD.pack(SESSION, 1, 1) + struct.pack(">H", len(add)) + add, books, orders, VENUE, 0, 0)
    junk = b"\x01" * 10 + struct.pack(">QH", 1 << 63, 1) + b"\0\x24" + add
    assert decode_itch(junk, books, orders, VENUE, 0, 0) == ()
    for count in (itch50.HEARTBEAT, itch50.END_OF_SESSION):
        assert decode_itch(MOLD.pack(SESSION, 2, count) + b"junk", books, orders, VENUE, 0, 0) == ()
    decode_itch(MOLD.pack(SESSION, 2, 1) + struct.pack(">H", 19) + DELETE.pack(b"D", INSTRUMENT, 0, STAMP, 1),
                books, orders, VENUE, 0, 0)
    assert orders.dropped == {"session not printable": 1, "bytes after messages": 2}
    assert (orders.packets, orders.gaps, orders.duplicates, orders.regressions, len(orders)) == (2, 0, 0, 0, 0)
