"""A generated ITCH 5.0 day and a plain-Python reference L3 book, for tests/engine/test_itch_book.py
and benchmarks/bench_l3book.py (its baseline).

The day is drawn from a seeded numpy generator: adds (with and without MPID), executions (with and
without price), cancels, deletes, replaces and trades over a few stock locates, plus a little of what
the book ignores or drops (system events, stock directories, adds for a locate the config does not
name). It is encoded vectorised from the declared layouts (engine.protocol.itch50) into MoldUDP64
packets of as many messages as asked.
"""
from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect
from collections import Counter

import numpy as np

from engine.protocol import itch50

BID, ASK = 1, 2
SESSION = b"WIRELAB001"
VENUE = 1
LOCATES = (3, 7, 11, 12)            # the instruments the engine's config names
UNNAMED_LOCATE = 99                 # one it does not
TICK = 10**6                        # 0.01 in the lab's 1e-8 units
TICK_PRICE4 = TICK // itch50.PRICE_SCALE
TYPE = {layout.name: kind for kind, layout in itch50.MESSAGES.items()}
A, F, E, C, X, D, U, P, S, R = (TYPE[layout.name] for layout in (
    itch50.ADD_ORDER, itch50.ADD_ORDER_MPID, itch50.ORDER_EXECUTED, itch50.ORDER_EXECUTED_PRICE, itch50.ORDER_CANCEL,
    itch50.ORDER_DELETE, itch50.ORDER_REPLACE, itch50.TRADE, itch50.SYSTEM_EVENT, itch50.STOCK_DIRECTORY))
BUY, SELL = ord(itch50.BUY), ord(itch50.SELL)
COLUMNS = ("type", "locate", "ref", "new_ref", "side", "shares", "price", "printable", "stamp")
UNNAMED = -1                        # an add for UNNAMED_LOCATE
# each kind of message while a locate has between FEW and MANY live orders: its cumulative chance
CHANCES = (0.30, 0.40, 0.52, 0.57, 0.67, 0.84, 0.94, 0.975, 0.985, 0.99)
KINDS = (A, F, E, C, X, D, U, P, S, R, UNNAMED)
FEW, MANY = 50, 400


def generate_day(n_messages: int, seed: int) -> dict[str, np.ndarray]:
    """n_messages ITCH messages as columns (int64 arrays): type byte, stock locate, order ref (the
    original for a replace), new ref (a replace's), side code, shares, price (Price(4)), printable code
    (C), Timestamp (ns since midnight). Every execution, cancel, delete and replace names a live order
    and at most its shares."""
    rng = np.random.default_rng(seed)
    out = {name: array("q") for name in COLUMNS}
    appends = [out[name].append for name in COLUMNS]
    live = {locate: [] for locate in LOCATES}             # live refs, for a pick in O(1)
    where, orders = {}, {}                                # ref -> index in live; ref -> [side, price, shares]
    mid = {locate: 1_000_000 + 50_000 * k for k, locate in enumerate(LOCATES)}    # $100.00 and up, Price(4)
    next_ref, stamp = 1, 34_200 * 10**9                   # 9:30
    chunk = 1 << 16
    for start in range(0, n_messages, chunk):
        size = min(chunk, n_messages - start)
        draws = zip(*(rng.random(size).tolist() for _ in range(5)))
        for u_kind, u_locate, u_pick, u_shares, u_price in draws:
            locate = LOCATES[int(u_locate * len(LOCATES))]
            refs = live[locate]
            if u_price < 0.02:                            # the mid drifts
                mid[locate] += TICK_PRICE4 * (1 if u_price < 0.01 else -1)
            kind = A if len(refs) < FEW else KINDS[bisect(CHANCES, u_kind)]
            if kind in (A, F) and len(refs) > MANY:
                kind = D                                  # keep the book a realistic size
            stamp += 1 + int(u_shares * 2000)
            ref, new_ref, side, shares, price, printable = 0, 0, 0, 0, 0, 0
            if kind in (A, F):
                side = BUY if u_pick < 0.5 else SELL
                offset = 1 + int(-math.log(1.0 - u_price) * 4)
                price = mid[locate] + (-offset if side == BUY else offset) * TICK_PRICE4
                ref, next_ref, shares = next_ref, next_ref + 1, 1 + int(u_shares * 900)
                orders[ref] = [side, price, shares]
                where[ref] = len(refs)
                refs.append(ref)
            elif kind in (E, C, X, D, U):
                ref = refs[int(u_pick * len(refs))]
                order = orders[ref]
                side, price, remaining = order
                if kind == D:
                    shares = remaining
                elif kind == U:
                    offset = 1 + int(-math.log(1.0 - u_price) * 4)
                    price = mid[locate] + (-offset if side == BUY else offset) * TICK_PRICE4
                    new_ref, next_ref, shares = next_ref, next_ref + 1, 1 + int(u_shares * 900)
                else:
                    shares = remaining if u_shares < 0.3 else 1 + int(u_shares * remaining) % remaining
                if kind == C:
                    printable = ord(itch50.PRINTABLE) if u_price < 0.9 else ord(b"N")
                    price += TICK_PRICE4 * (u_pick < 0.1)         # an execution at another price
                if kind == U or shares == remaining:
                    last = refs.pop()                     # swap-remove
                    if last != ref:
                        refs[where[ref]] = last
                        where[last] = where[ref]
                    del where[ref], orders[ref]
                    if kind == U:
                        orders[new_ref] = [side, price, shares]
                        where[new_ref] = len(refs)
                        refs.append(new_ref)
                else:
                    order[2] -= shares
            elif kind == P:
                side, shares = BUY if u_pick < 0.5 else SELL, 1 + int(u_shares * 300)
                price = mid[locate] + int((u_price - 0.5) * 6) * TICK_PRICE4
            elif kind == UNNAMED:                         # an add the engine must drop: not its instrument
                kind, locate, side, shares, price = A, UNNAMED_LOCATE, BUY, 100, mid[LOCATES[0]]
                ref, next_ref = next_ref, next_ref + 1
            elif kind == S:
                locate = 0
            for append, value in zip(appends, (kind, locate, ref, new_ref, side, shares, price, printable, stamp)):
                append(value)
    return {name: np.frombuffer(values, np.int64) for name, values in out.items()}


def encode_packets(day: dict[str, np.ndarray], counts) -> tuple[np.ndarray, np.ndarray]:
    """The day as MoldUDP64 packets of counts[i] messages each, back to back, their seqs from 1:
    (uint8 buffer, start of each packet and the end)."""
    counts = np.asarray(counts, np.int64)
    n = len(day["type"])
    assert counts.sum() == n
    sizes = itch50.SIZE_BY_TYPE[day["type"]]
    packet_of = np.repeat(np.arange(counts.size), counts)
    block = itch50.BLOCK_BYTES + sizes
    block_at = np.cumsum(block) - block + itch50.MOLD_HEADER.size * (packet_of + 1)   # from the buffer's start
    packet_bytes = itch50.MOLD_HEADER.size + np.bincount(packet_of, block, counts.size).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(packet_bytes)])
    out = np.zeros(int(bounds[-1]), np.uint8)
    header = np.zeros(counts.size, itch50.MOLD_HEADER.dtype)
    header["session"], header["sequence"], header["count"] = SESSION, 1 + np.cumsum(counts) - counts, counts
    _scatter(out, bounds[:-1], header.view(np.uint8).reshape(counts.size, -1))
    stamp_bytes = ((day["stamp"][:, None] >> (8 * np.arange(5, -1, -1))) & 0xFF).astype(np.uint8)
    for kind, layout in itch50.MESSAGES.items():
        rows = np.flatnonzero(day["type"] == kind)
        for chunk in [] if not rows.size else np.array_split(rows, max(1, rows.size // 50_000)):
            record = np.zeros(chunk.size, [("length", ">u2"), ("message", layout.dtype)])
            record["length"] = layout.size
            m = record["message"]
            m["message_type"], m["stock_locate"] = bytes([kind]), day["locate"][chunk]
            m["timestamp"] = np.ascontiguousarray(stamp_bytes[chunk]).view("V6").ravel()
            for field, column in (("order_ref", "ref"), ("original_ref", "ref"), ("new_ref", "new_ref"),
                                  ("shares", "shares"), ("executed_shares", "shares"), ("cancelled_shares", "shares"),
                                  ("price", "price"), ("execution_price", "price"), ("match_number", "ref")):
                if field in layout.dtype.names:
                    m[field] = day[column][chunk]
            if "side" in layout.dtype.names:
                m["side"] = np.where(day["side"][chunk] == BUY, itch50.BUY, itch50.SELL)
            if "printable" in layout.dtype.names:
                m["printable"] = day["printable"][chunk].astype(np.uint8).view("S1")
            if "stock" in layout.dtype.names:
                m["stock"] = np.char.add(b"SYM", day["locate"][chunk].astype("S5"))
            _scatter(out, block_at[chunk], record.view(np.uint8).reshape(chunk.size, -1))
    return out, bounds


def _scatter(out: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
    out[(at[:, None] + np.arange(rows.shape[1])).ravel()] = rows.ravel()


def _reader(layout, *names):
    """Unpack one message of `layout`: the values of `names`, in order."""
    unpack, index = layout.struct.unpack, [layout.dtype.names.index(name) for name in names]

    def read(message):
        values = unpack(message)
        return [values[k] for k in index]
    return read


READERS = {kind: _reader(layout, "stock_locate", "timestamp", *fields) for kind, (layout, fields) in {
    A: (itch50.ADD_ORDER, ("order_ref", "side", "shares", "price")),
    F: (itch50.ADD_ORDER_MPID, ("order_ref", "side", "shares", "price")),
    E: (itch50.ORDER_EXECUTED, ("order_ref", "executed_shares")),
    C: (itch50.ORDER_EXECUTED_PRICE, ("order_ref", "executed_shares", "printable", "execution_price")),
    X: (itch50.ORDER_CANCEL, ("order_ref", "cancelled_shares")),
    D: (itch50.ORDER_DELETE, ("order_ref",)),
    U: (itch50.ORDER_REPLACE, ("original_ref", "new_ref", "shares", "price")),
    P: (itch50.TRADE, ("shares", "price"))}.items()}
SIZE = {kind: layout.size for kind, layout in itch50.MESSAGES.items()}
MOLD = struct.Struct(">10sQH")
BLOCK = struct.Struct(">H")


class ReferenceL3Book:
    """The obvious L3 book: a dict of live orders by (stock locate, order ref), and per instrument a
    dict of price -> shares for each side; the top is a max and a min over them. It reads the bytes
    with struct and drops what the C book drops, by the same reasons."""

    def __init__(self, ticks: dict[int, int]):
        self.ticks = ticks                                # locate -> tick, for the instruments named
        self.orders: dict[tuple[int, int], list] = {}     # (locate, ref) -> [side, price, shares]
        self.levels = {locate: {BID: {}, ASK: {}} for locate in ticks}
        self.last_top: dict[int, tuple] = {}              # after the last message applied to it
        self.dropped: Counter[str] = Counter()

    def top(self, locate: int) -> tuple[int, int, int, int]:
        bids, asks = self.levels[locate][BID], self.levels[locate][ASK]
        bid, ask = (max(bids) if bids else 0), (min(asks) if asks else 0)
        return bid, bids.get(bid, 0), ask, asks.get(ask, 0)

    def _level(self, locate, side, price, delta):
        levels = self.levels[locate][side]
        shares = levels.get(price, 0) + delta
        if shares:
            levels[price] = shares
        else:
            levels.pop(price, None)

    def _add(self, locate, ref, side, shares, price) -> bool:
        if price % self.ticks[locate]:
            self.dropped["price off the tick grid"] += 1
        elif (locate, ref) in self.orders:
            self.dropped["duplicate order ref"] += 1
        else:
            self.orders[locate, ref] = [side, price, shares]
            self._level(locate, side, price, shares)
            return True
        return False

    def _reduce(self, locate, ref, shares) -> bool:
        order = self.orders[locate, ref]
        if shares > order[2]:
            self.dropped["shares beyond the order"] += 1
            return False
        self._level(locate, order[0], order[1], -shares)
        order[2] -= shares
        if not order[2]:
            del self.orders[locate, ref]
        return True

    def message(self, message) -> tuple | None:
        """Apply one message: None if it did not touch a named instrument's book, else (locate, Timestamp,
        top after it, (trade price, qty) or None, whether the top moved)."""
        kind = message[0]
        if kind not in SIZE:
            self.dropped["unknown message type"] += 1
            return None
        if len(message) != SIZE[kind]:
            self.dropped["wrong message length"] += 1
            return None
        if kind not in READERS:
            return None
        locate, stamp, *fields = READERS[kind](message)
        if locate not in self.ticks:
            self.dropped["unknown instrument"] += 1
            return None
        scale, trade = itch50.PRICE_SCALE, None
        if kind in (A, F):
            ref, side_code, shares, price = fields
            side = {itch50.BUY: BID, itch50.SELL: ASK}.get(side_code)
            if side is None:
                self.dropped["bad side"] += 1
                return None
            if not self._add(locate, ref, side, shares, price * scale):
                return None
        elif kind == P:
            trade = (fields[1] * scale, fields[0])
        else:
            ref = fields[0]
            order = self.orders.get((locate, ref))
            if order is None:
                self.dropped["unknown order ref"] += 1
                return None
            if kind == U:
                new_ref, shares, price = fields[1:]
                if price * scale % self.ticks[locate]:
                    self.dropped["price off the tick grid"] += 1
                    return None
                if new_ref != ref and (locate, new_ref) in self.orders:
                    self.dropped["duplicate order ref"] += 1
                    return None
                self._reduce(locate, ref, order[2])
                self._add(locate, new_ref, order[0], shares, price * scale)
            else:
                shares = order[2] if kind == D else fields[1]
                if not self._reduce(locate, ref, shares):
                    return None
                if kind == E:
                    trade = (order[1], shares)
                elif kind == C and fields[2] == itch50.PRINTABLE:
                    trade = (fields[3] * scale, shares)
        top = self.top(locate)
        moved = top != self.last_top.get(locate, (0, 0, 0, 0))
        self.last_top[locate] = top
        return locate, int.from_bytes(stamp, "big"), top, trade, moved

    def packet(self, payload) -> list[tuple]:
        """One MoldUDP64 packet: for each instrument whose top moved or that traded, in order of first
        change, the MarketUpdate fields from seq on (seq and Timestamp of the last message applied to it,
        venue, locate, top, last trade price and qty), as decode_itch gives them after app_in, publish TSC
        and kernel RX ns."""
        _session, seq, count = MOLD.unpack_from(payload)
        at, end = MOLD.size, len(payload)
        touched = {}                                      # locate -> [seq, stamp, top, trade], in order of change
        for k in range(count):
            if end - at < BLOCK.size:
                self.dropped["count beyond messages"] += 1
                break
            (length,) = BLOCK.unpack_from(payload, at)
            at += BLOCK.size
            if length > end - at:
                self.dropped["message past datagram"] += 1
                break
            message = payload[at:at + length]
            at += length
            if not length:
                self.dropped["zero-length message"] += 1
                continue
            applied = self.message(message)
            if applied is None:
                continue
            locate, stamp, top, trade, moved = applied
            if locate in touched:
                state = touched[locate]
                state[:3] = seq + k, stamp, top
            elif moved or trade:
                state = touched[locate] = [seq + k, stamp, top, (0, 0)]
            else:
                continue
            if trade:
                state[3] = trade
        else:
            if at < end:
                self.dropped["bytes after messages"] += 1
        return [(seq, stamp, VENUE, locate, *top, *trade) for locate, (seq, stamp, top, trade) in touched.items()]
