"""The binary market-data datagram (one UDP payload).

    header (32 bytes) | n_updates L2 update entries (24 each) | n_trades trade entries (24 each)

The first two update entries are always the best bid, then the best ask, so
that a reader that decides after the first bytes has read something meaningful.
Prices are int64 ticks of 1e-8 of the currency. See docs/protocol.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.protocol.errors import ProtocolError
from engine.protocol.layout import Field, Layout, as_bytes_array, gather
from engine.protocol.registry import MdMessages, MdProtocol

MAGIC = b"WM"
VERSION = 1
MSG_TYPE_MD = 1

BID, ASK = 1, 2            # side of an L2 update; also a trade's aggressor (0 = unknown)
SET, DELETE = 1, 2         # action of an L2 update: set the level's qty, or remove the level

HEADER = Layout("MD header", 32, [
    Field("magic", 0, "S2", 'b"WM"'),
    Field("version", 2, "u1", "1"),
    Field("msg_type", 3, "u1", "1 = market data"),
    Field("length", 4, "<u2", "bytes in the whole datagram, header included"),
    Field("venue", 6, "<u2", "venue id"),
    Field("seq", 8, "<u8", "sequence number of this datagram on its feed"),
    Field("instrument", 16, "<u4", "instrument id"),
    Field("n_updates", 20, "<u2", "L2 update entries after the header (>= 2)"),
    Field("n_trades", 22, "<u2", "trade entries after the updates"),
    Field("send_ts_ns", 24, "<i8", "sender's clock when sent, ns since the Unix epoch"),
])
UPDATE = Layout("L2 update entry", 24, [
    Field("side", 0, "u1", "1 bid, 2 ask"),
    Field("action", 1, "u1", "1 set (level now has qty), 2 delete (level removed)"),
    Field("price", 8, "<i8", "price in ticks of 1e-8"),
    Field("qty", 16, "<i8", "quantity at the level after the update"),
])
TRADE = Layout("trade entry", 24, [
    Field("price", 0, "<i8", "price in ticks of 1e-8"),
    Field("qty", 8, "<i8", "traded quantity"),
    Field("aggressor", 16, "u1", "1 buyer, 2 seller, 0 unknown"),
])

HEADER_DTYPE = HEADER.dtype
UPDATE_DTYPE = UPDATE.dtype
TRADE_DTYPE = TRADE.dtype
HEADER_SIZE = HEADER.size
UPDATE_SIZE = UPDATE.size
TRADE_SIZE = TRADE.size
SEQ_OFFSET = HEADER.offset("seq")
BEST_BID_OFFSET = HEADER_SIZE                  # the first update entry
BEST_ASK_OFFSET = HEADER_SIZE + UPDATE_SIZE    # the second update entry
MAX_LENGTH = 0xFFFF


def md_length(n_updates, n_trades):
    """Datagram bytes for the given entry counts (ints or arrays)."""
    return HEADER_SIZE + UPDATE_SIZE * n_updates + TRADE_SIZE * n_trades


def datagram_dtype(n_updates: int, n_trades: int) -> np.dtype:
    """One whole datagram of fixed shape as a structured dtype (for building many at once)."""
    return np.dtype([("header", HEADER_DTYPE), ("updates", UPDATE_DTYPE, (n_updates,)),
                     ("trades", TRADE_DTYPE, (n_trades,))])


@dataclass(frozen=True)
class L2Update:
    side: int
    action: int
    price: int
    qty: int


@dataclass(frozen=True)
class Trade:
    price: int
    qty: int
    aggressor: int = 0


@dataclass(frozen=True)
class MdDatagram:
    venue: int
    seq: int
    instrument: int
    send_ts_ns: int
    updates: tuple[L2Update, ...]      # updates[0] is the best bid, updates[1] the best ask
    trades: tuple[Trade, ...] = ()

    def encode(self) -> bytes:
        _check_updates(self.updates, offset=None)
        for trade in self.trades:
            if trade.aggressor not in (0, BID, ASK):
                raise ProtocolError(f"trade aggressor {trade.aggressor} is not 0, 1 or 2")
        length = md_length(len(self.updates), len(self.trades))
        if length > MAX_LENGTH:
            raise ProtocolError(f"{length} bytes of entries do not fit the u16 length field")
        record = np.zeros((), datagram_dtype(len(self.updates), len(self.trades)))
        record["header"] = (MAGIC, VERSION, MSG_TYPE_MD, length, self.venue, self.seq,
                            self.instrument, len(self.updates), len(self.trades), self.send_ts_ns)
        for i, update in enumerate(self.updates):
            record["updates"][i] = (update.side, update.action, update.price, update.qty)
        for i, trade in enumerate(self.trades):
            record["trades"][i] = (trade.price, trade.qty, trade.aggressor)
        return record.tobytes()


def decode_md(buf) -> MdDatagram:
    """Decode one whole datagram (a UDP payload), checking every length and code."""
    data = as_bytes_array(buf)
    if data.size < HEADER_SIZE:
        raise ProtocolError(f"MD datagram of {data.size} bytes is shorter than its "
                            f"{HEADER_SIZE}-byte header", 0)
    header = gather(data, [0], HEADER_DTYPE)[0]
    _check_header_codes(header)
    length, n_updates, n_trades = int(header["length"]), int(header["n_updates"]), int(header["n_trades"])
    if length != data.size:
        raise ProtocolError(f"MD length field says {length} bytes but the datagram has {data.size}",
                            HEADER.offset("length"))
    if md_length(n_updates, n_trades) != length:
        raise ProtocolError(f"MD length {length} disagrees with {n_updates} updates and "
                            f"{n_trades} trades ({md_length(n_updates, n_trades)} bytes)",
                            HEADER.offset("n_updates"))
    updates = gather(data, HEADER_SIZE + UPDATE_SIZE * np.arange(n_updates), UPDATE_DTYPE)
    trades = gather(data, md_length(n_updates, 0) + TRADE_SIZE * np.arange(n_trades), TRADE_DTYPE)
    decoded_updates = tuple(L2Update(int(u["side"]), int(u["action"]), int(u["price"]), int(u["qty"]))
                            for u in updates)
    _check_updates(decoded_updates, offset=HEADER_SIZE)
    bad_aggressor = ~np.isin(trades["aggressor"], (0, BID, ASK))
    if bad_aggressor.any():
        i = int(np.argmax(bad_aggressor))
        raise ProtocolError(f"trade {i} has aggressor {trades['aggressor'][i]}, not 0, 1 or 2",
                            md_length(n_updates, i) + TRADE.offset("aggressor"))
    return MdDatagram(
        venue=int(header["venue"]), seq=int(header["seq"]), instrument=int(header["instrument"]),
        send_ts_ns=int(header["send_ts_ns"]), updates=decoded_updates,
        trades=tuple(Trade(int(t["price"]), int(t["qty"]), int(t["aggressor"])) for t in trades))


def decode_md_headers(data, offsets) -> np.ndarray:
    """Headers of many datagrams at once: a HEADER_DTYPE array, one row per offset.

    Only checks that each header lies inside `data`; use valid_md_headers() to
    tell real MD datagrams from other payloads.
    """
    return gather(data, offsets, HEADER_DTYPE)


def valid_md_headers(headers: np.ndarray, available=None) -> np.ndarray:
    """Boolean mask: magic, version and type right, and lengths consistent.

    `available` (optional, per header) is the payload bytes actually present;
    a datagram is valid only if its length field equals it.
    """
    length = headers["length"].astype(np.int64)
    ok = ((headers["magic"] == MAGIC) & (headers["version"] == VERSION)
          & (headers["msg_type"] == MSG_TYPE_MD) & (headers["n_updates"] >= 2)
          & (md_length(headers["n_updates"].astype(np.int64), headers["n_trades"].astype(np.int64))
             == length))
    if available is not None:
        ok &= length == np.asarray(available, dtype=np.int64)
    return ok


def _check_header_codes(header) -> None:
    if header["magic"] != MAGIC:
        raise ProtocolError(f"wrong MD magic {bytes(header['magic'])!r}, expected {MAGIC!r}", 0)
    if header["version"] != VERSION:
        raise ProtocolError(f"unsupported MD version {header['version']}", HEADER.offset("version"))
    if header["msg_type"] != MSG_TYPE_MD:
        raise ProtocolError(f"unknown MD message type {header['msg_type']}", HEADER.offset("msg_type"))


def _check_updates(updates, offset: int | None) -> None:
    """The first two updates are the best bid then the best ask; codes are known ones."""
    if len(updates) < 2:
        raise ProtocolError(f"an MD datagram needs the best bid and ask first, got {len(updates)} updates",
                            None if offset is None else HEADER.offset("n_updates"))
    for i, update in enumerate(updates):
        at = None if offset is None else offset + i * UPDATE_SIZE
        if update.side not in (BID, ASK):
            raise ProtocolError(f"update {i} has side {update.side}, not 1 (bid) or 2 (ask)", at)
        if update.action not in (SET, DELETE):
            raise ProtocolError(f"update {i} has action {update.action}, not 1 (set) or 2 (delete)", at)
    if updates[0].side != BID or updates[1].side != ASK:
        raise ProtocolError("the first two updates must be the best bid then the best ask", offset)


class WmMarketData(MdProtocol):
    name = "wm"
    title = "the lab's market-data datagram (WM)"
    framing = ("one message per UDP datagram: the header, then n_updates L2 update entries and "
               "n_trades trade entries")
    layouts = (HEADER, UPDATE, TRADE)
    # the capture kernel's probe (lab/analysis/_kernels.c md_layout): magic, version and type as
    # one LE u32 at 0, the offsets of length, seq, n_updates and n_trades, the bytes it reads, the sizes
    kernel_probe = (
        int.from_bytes(MAGIC + bytes([VERSION, MSG_TYPE_MD]), "little"),
        HEADER.offset("length"), HEADER.offset("seq"), HEADER.offset("n_updates"), HEADER.offset("n_trades"),
        max(HEADER.offset(name) + HEADER.dtype.fields[name][0].itemsize
            for name in ("length", "seq", "n_updates", "n_trades")),
        HEADER_SIZE, UPDATE_SIZE, TRADE_SIZE)
    # the engine's book decoder (engine/_book.c set_layout)
    book_layout = (
        int.from_bytes(MAGIC, "little"), HEADER.offset("version"), VERSION, HEADER.offset("msg_type"), MSG_TYPE_MD,
        *(HEADER.offset(name) for name in ("length", "venue", "seq", "instrument", "n_updates", "n_trades",
                                            "send_ts_ns")),
        HEADER_SIZE, UPDATE_SIZE, TRADE_SIZE, UPDATE.offset("side"), UPDATE.offset("action"), SET,
        UPDATE.offset("price"), UPDATE.offset("qty"), TRADE.offset("price"), TRADE.offset("qty"))

    def messages(self, data, offsets, lengths):
        data, offsets, lengths = as_bytes_array(data), np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)
        rows = np.flatnonzero(lengths >= HEADER_SIZE)
        headers = decode_md_headers(data, offsets[rows])
        ok = valid_md_headers(headers, lengths[rows])
        return MdMessages(rows[ok], headers["seq"][ok].astype(np.int64), {"not_wm": int(lengths.size - np.count_nonzero(ok))})

    def decode(self, payload) -> MdDatagram:
        return decode_md(payload)

    def synth_shape(self, n_updates, n_trades):
        return md_length(np.asarray(n_updates, np.int64), np.asarray(n_trades, np.int64)), np.ones(len(n_updates), np.int64)

    def synth_payloads(self, cols: dict, index, tick: int):
        n_updates, n_trades = cols["n_updates"][index], cols["n_trades"][index]
        length = md_length(n_updates.astype(np.int64), n_trades.astype(np.int64))
        where = np.cumsum(length) - length
        out = np.empty(int(length.sum()), np.uint8)
        shapes = n_updates * 16 + n_trades
        for shape in np.unique(shapes):
            mine = np.flatnonzero(shapes == shape)
            records = _synth_records(cols, index[mine], int(shape) // 16, int(shape) % 16, tick)
            out[(where[mine][:, None] + np.arange(records.shape[1])).ravel()] = records.ravel()
        return out, where

    def from_l2(self, datagrams: list) -> tuple[list[bytes], list[int], list[int]]:
        return [d.encode() for d in datagrams], [d.seq for d in datagrams], list(range(len(datagrams)))

    def stamp(self, payload, seq=None, send_ts_ns=None) -> None:
        if seq is not None:
            HEADER.put(payload, "seq", seq)
        if send_ts_ns is not None:
            HEADER.put(payload, "send_ts_ns", send_ts_ns)


def _synth_records(cols: dict, index: np.ndarray, n_updates: int, n_trades: int, tick: int) -> np.ndarray:
    """Datagrams of one shape, one per row."""
    records = np.zeros(index.size, datagram_dtype(n_updates, n_trades))
    header = records["header"]
    header["magic"], header["version"], header["msg_type"] = MAGIC, VERSION, MSG_TYPE_MD
    header["length"], header["n_updates"], header["n_trades"] = md_length(n_updates, n_trades), n_updates, n_trades
    for name in ("venue", "seq", "instrument", "send_ts_ns"):
        header[name] = cols[name][index]
    updates, qty = records["updates"], cols["qty"][index]
    bid, ask = cols["bid"][index], cols["ask"][index]
    updates["action"] = SET
    updates["side"][:, 0], updates["price"][:, 0], updates["qty"][:, 0] = BID, bid, qty[:, 0]
    updates["side"][:, 1], updates["price"][:, 1], updates["qty"][:, 1] = ASK, ask, qty[:, 1]
    for level in range(2, n_updates):                 # deeper levels, alternating sides
        on_bid = level % 2 == 0
        updates["side"][:, level] = BID if on_bid else ASK
        updates["price"][:, level] = bid - level // 2 * tick if on_bid else ask + level // 2 * tick
        updates["qty"][:, level] = qty[:, level]
    if n_trades:
        trades = records["trades"]
        aggressor = cols["aggressor"][index]
        trades["price"][:, 0] = np.where(aggressor == BID, ask, bid)
        trades["qty"][:, 0], trades["aggressor"][:, 0] = qty[:, 5], aggressor
    return records.view(np.uint8).reshape(index.size, -1)


PROTOCOL = WmMarketData()
