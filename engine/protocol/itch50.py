"""NASDAQ TotalView-ITCH 5.0 messages in MoldUDP64 packets over UDP (`itch50`).

MoldUDP64 1.0, "Downstream Packet": a 20-byte header (Session, 10 alphanumeric bytes;
Sequence Number, u64, the first message's; Message Count, u16) and then Message Count
message blocks, each a u16 Message Length and that many bytes. Message i of a packet has
sequence number Sequence Number + i. A count of 0 is a heartbeat and 0xFFFF the end of the
session; neither carries messages.

TotalView-ITCH 5.0, section 4 "Message Formats": every message starts with Message Type
(1 alpha), Stock Locate (u16), Tracking Number (u16) and Timestamp (6 bytes, ns since
midnight). Every integer is big-endian; Price(4) has 4 implied decimals (the lab's prices are
ticks of 1e-8, so x 10^4). Decoded here: S, R, A, F, E, C, X, D, U and P (sections 4.1,
4.2.1, 4.3.1-4.3.2, 4.4.1-4.4.2, 4.5.1-4.5.3, 4.6.1). Any other type is counted as
undecoded, never an error.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from engine import _native
from engine.protocol.errors import ProtocolError
from engine.protocol.layout import Field, Layout, as_bytes_array, gather
from engine.protocol.registry import MdMessages, MdProtocol

PRICE_SCALE = 10**4                 # Price(4) -> ticks of 1e-8
BUY, SELL = b"B", b"S"              # Buy/Sell Indicator
PRINTABLE = b"Y"                    # an Order Executed With Price that prints (counts as a trade)
HEARTBEAT, END_OF_SESSION = 0, 0xFFFF
BLOCK_BYTES = 2                     # the u16 length in front of each message

MOLD_HEADER = Layout("MoldUDP64 header", 20, [
    Field("session", 0, "S10", "session, alphanumeric"),
    Field("sequence", 10, ">u8", "sequence number of the packet's first message"),
    Field("count", 18, ">u2", "messages in the packet; 0 heartbeat, 0xFFFF end of session"),
])


def _message(name: str, letter: str, size: int, fields: list[Field]) -> Layout:
    return Layout(name, size, [
        Field("message_type", 0, "S1", f'b"{letter}"'),
        Field("stock_locate", 1, ">u2", "the stock's number for the day (0: not stock-specific)"),
        Field("tracking_number", 3, ">u2", "Nasdaq internal tracking number"),
        Field("timestamp", 5, "V6", "ns since midnight, 48-bit big-endian"),
        *fields])


def _ref(offset: int, name: str = "order_ref") -> Field:
    return Field(name, offset, ">u8", "order reference number, unique for the day")


SYSTEM_EVENT = _message("System Event", "S", 12, [Field("event_code", 11, "S1", "O S Q M E C")])
STOCK_DIRECTORY = _message("Stock Directory", "R", 39, [
    Field("stock", 11, "S8", "symbol, space padded"), Field("market_category", 19, "S1", "Q G S N A P Z V"),
    Field("financial_status", 20, "S1", "D E Q S G H J K C N or space"),
    Field("round_lot_size", 21, ">u4", "shares in a round lot"), Field("round_lots_only", 25, "S1", "Y N"),
    Field("issue_classification", 26, "S1", "issue class"), Field("issue_subtype", 27, "S2", "issue subtype"),
    Field("authenticity", 29, "S1", "P live, T test"), Field("short_sale_threshold", 30, "S1", "Y N space"),
    Field("ipo_flag", 31, "S1", "Y N space"), Field("luld_tier", 32, "S1", "1 2 space"),
    Field("etp_flag", 33, "S1", "Y N space"), Field("etp_leverage_factor", 34, ">u4", "leverage factor"),
    Field("inverse", 38, "S1", "Y N")])
ADD_ORDER = _message("Add Order", "A", 36, [
    _ref(11), Field("side", 19, "S1", "B buy, S sell"), Field("shares", 20, ">u4", "shares"),
    Field("stock", 24, "S8", "symbol"), Field("price", 32, ">u4", "Price(4)")])
ADD_ORDER_MPID = _message("Add Order with MPID", "F", 40, [
    _ref(11), Field("side", 19, "S1", "B buy, S sell"), Field("shares", 20, ">u4", "shares"),
    Field("stock", 24, "S8", "symbol"), Field("price", 32, ">u4", "Price(4)"),
    Field("attribution", 36, "S4", "market participant id")])
ORDER_EXECUTED = _message("Order Executed", "E", 31, [
    _ref(11), Field("executed_shares", 19, ">u4", "shares executed"), Field("match_number", 23, ">u8", "match")])
ORDER_EXECUTED_PRICE = _message("Order Executed With Price", "C", 36, [
    _ref(11), Field("executed_shares", 19, ">u4", "shares executed"), Field("match_number", 23, ">u8", "match"),
    Field("printable", 31, "S1", "Y N"), Field("execution_price", 32, ">u4", "Price(4)")])
ORDER_CANCEL = _message("Order Cancel", "X", 23, [
    _ref(11), Field("cancelled_shares", 19, ">u4", "shares removed")])
ORDER_DELETE = _message("Order Delete", "D", 19, [_ref(11)])
ORDER_REPLACE = _message("Order Replace", "U", 35, [
    _ref(11, "original_ref"), _ref(19, "new_ref"), Field("shares", 27, ">u4", "shares of the new order"),
    Field("price", 31, ">u4", "Price(4)")])
TRADE = _message("Trade (non-cross)", "P", 44, [
    _ref(11), Field("side", 19, "S1", "B S"), Field("shares", 20, ">u4", "shares"),
    Field("stock", 24, "S8", "symbol"), Field("price", 32, ">u4", "Price(4)"),
    Field("match_number", 36, ">u8", "match")])
MESSAGES = {ord(letter): layout for letter, layout in zip("SRAFECXDUP", (
    SYSTEM_EVENT, STOCK_DIRECTORY, ADD_ORDER, ADD_ORDER_MPID, ORDER_EXECUTED, ORDER_EXECUTED_PRICE, ORDER_CANCEL,
    ORDER_DELETE, ORDER_REPLACE, TRADE))}
SIZE_BY_TYPE = np.zeros(256, np.int64)
for _type, _layout in MESSAGES.items():
    SIZE_BY_TYPE[_type] = _layout.size


def _place(layout: Layout, name: str) -> tuple[int, int]:
    """(offset, width) of a field."""
    return layout.offset(name), layout.dtype.fields[name][0].itemsize


def _book_message(layout: Layout, *fields: str) -> tuple[int, ...]:
    """A message as the engine's L3 book reads it: its type byte, its size, and (offset, width) of its
    stock locate, its timestamp and `fields`."""
    type_byte = next(t for t, declared in MESSAGES.items() if declared is layout)
    places = (_place(layout, name) for name in ("stock_locate", "timestamp", *fields))
    return (type_byte, layout.size, *(value for place in places for value in place))


# the header as engine._native.walk_mold reads it: size, session (the bytes before the sequence),
# the sequence's and the count's offsets, and the two counts that carry no messages
WALK_HEADER = (MOLD_HEADER.size, MOLD_HEADER.offset("sequence"), MOLD_HEADER.offset("sequence"),
               MOLD_HEADER.offset("count"), HEARTBEAT, END_OF_SESSION)


class Packets(NamedTuple):
    """The message blocks of a batch of MoldUDP64 packets, one row each."""
    datagram: np.ndarray      # which packet
    seq: np.ndarray           # its sequence number
    at: np.ndarray            # offset of the message (its type byte) in the data
    length: np.ndarray        # its bytes
    problems: dict            # what could not be used, by reason


def frame_packets(data, offsets, lengths) -> Packets:
    """Every message of every packet, walked in C (engine._native.walk_mold). Packets that are not
    MoldUDP64 (shorter than the header, or a session that is not printable ASCII) have no
    messages and count nothing."""
    data = np.ascontiguousarray(as_bytes_array(data))
    offsets, lengths = np.ascontiguousarray(offsets, np.int64), np.ascontiguousarray(lengths, np.int64)
    rows = np.flatnonzero(lengths >= MOLD_HEADER.size)
    at = offsets[rows] + MOLD_HEADER.offset("count")
    count = data[at].astype(np.int64) << 8 | data[at + 1]
    room = int(np.minimum(count, (lengths[rows] - MOLD_HEADER.size) // BLOCK_BYTES).sum())   # at most this many
    packet, seq, at, length = (np.empty(room, np.int64) for _ in range(4))
    written, *counts = _native.walk_mold(data, offsets, lengths, WALK_HEADER, packet, seq, at, length)
    problems = dict(zip(("heartbeats", "end_of_session", "count_beyond_messages", "message_past_datagram",
                         "zero_length_messages", "bytes_after_messages"), counts))
    return Packets(packet[:written], seq[:written], at[:written], length[:written], problems)


class Itch50MarketData(MdProtocol):
    name = "itch50"
    title = "NASDAQ TotalView-ITCH 5.0 in MoldUDP64"
    framing = ("a 20-byte MoldUDP64 header (session, first seq, count), then count blocks of a u16 length "
               "and one ITCH message; message i has seq first + i")
    layouts = (MOLD_HEADER, *MESSAGES.values())
    # the engine's L3 book (engine/_book.c set_itch_layout): the MoldUDP64 header, the codes, then the
    # messages in the order the decoder takes them
    book_orders = True
    book_layout = (
        MOLD_HEADER.size, *_place(MOLD_HEADER, "sequence"), *_place(MOLD_HEADER, "count"), BLOCK_BYTES, PRICE_SCALE,
        HEARTBEAT, END_OF_SESSION, ord(BUY), ord(SELL), ord(PRINTABLE),
        *_book_message(ADD_ORDER, "order_ref", "side", "shares", "price"),
        *_book_message(ADD_ORDER_MPID, "order_ref", "side", "shares", "price"),
        *_book_message(ORDER_EXECUTED, "order_ref", "executed_shares"),
        *_book_message(ORDER_EXECUTED_PRICE, "order_ref", "executed_shares", "printable", "execution_price"),
        *_book_message(ORDER_CANCEL, "order_ref", "cancelled_shares"),
        *_book_message(ORDER_DELETE, "order_ref"),
        *_book_message(ORDER_REPLACE, "original_ref", "new_ref", "shares", "price"),
        *_book_message(TRADE, "shares", "price"),
        *_book_message(SYSTEM_EVENT), *_book_message(STOCK_DIRECTORY))

    def messages(self, data, offsets, lengths) -> MdMessages:
        found = frame_packets(data, offsets, lengths)
        types = as_bytes_array(data)[found.at] if found.at.size else np.zeros(0, np.uint8)
        known = SIZE_BY_TYPE[types]
        problems = dict(found.problems, undecoded_types=int(np.count_nonzero(known == 0)),
                        wrong_message_lengths=int(np.count_nonzero((known != 0) & (known != found.length))))
        return MdMessages(found.datagram, found.seq, problems)

    def decode(self, payload) -> list:
        """A packet's messages as (seq, type letter, record) with the record a numpy row of
        its layout; ProtocolError if the packet is not a whole MoldUDP64 packet."""
        if len(payload) < MOLD_HEADER.size:          # frame_packets passes over what is not MoldUDP64
            raise ProtocolError(f"MoldUDP64 packet of {len(payload)} bytes is shorter than its "
                                f"{MOLD_HEADER.size}-byte header", 0)
        session = bytes(payload[:MOLD_HEADER.offset("sequence")])
        if not all(0x20 <= byte < 0x7F for byte in session):
            raise ProtocolError(f"MoldUDP64 session {session!r} is not printable ASCII", 0)
        found = frame_packets(payload, [0], [len(payload)])
        bad = {k: v for k, v in found.problems.items() if v and k not in ("heartbeats", "end_of_session")}
        if bad:
            raise ProtocolError(f"MoldUDP64 packet: {', '.join(f'{k} {v}' for k, v in bad.items())}")
        out = []
        for seq, at, length in zip(found.seq.tolist(), found.at.tolist(), found.length.tolist()):
            letter = payload[at]
            layout = MESSAGES.get(letter)
            record = gather(payload, [at], layout.dtype)[0] if layout and layout.size == length else None
            out.append((seq, chr(letter), record))
        return out

    SESSION = b"WIRELAB001"

    def synth_shape(self, n_updates, n_trades):
        """A packet of one Add Order per book level and one Order Executed per trade."""
        n_updates, n_trades = np.asarray(n_updates, np.int64), np.asarray(n_trades, np.int64)
        return (MOLD_HEADER.size + (BLOCK_BYTES + ADD_ORDER.size) * n_updates
                + (BLOCK_BYTES + ORDER_EXECUTED.size) * n_trades, n_updates + n_trades)

    def synth_payloads(self, cols: dict, index, tick: int):
        """Level j of a datagram is an Add Order (ref = its seq); a trade executes the order at
        the touch it took (the best ask for a buyer, the best bid for a seller)."""
        index = np.asarray(index, np.int64)
        n_updates, n_trades = cols["n_updates"][index].astype(np.int64), cols["n_trades"][index].astype(np.int64)
        length, messages = self.synth_shape(n_updates, n_trades)
        where = np.cumsum(length) - length
        out = np.zeros(int(length.sum()), np.uint8)
        seq = cols["seq"][index].astype(np.int64)
        stamp = (cols["send_ts_ns"][index].astype(np.int64) % (86_400 * 10**9))
        stamp_bytes = ((stamp[:, None] >> (8 * np.arange(5, -1, -1))) & 0xFF).astype(np.uint8)
        header = np.zeros(index.size, MOLD_HEADER.dtype)
        header["session"], header["sequence"], header["count"] = self.SESSION, seq, messages
        _put(out, where, header.view(np.uint8).reshape(index.size, MOLD_HEADER.size))
        bid, ask, qty = cols["bid"][index], cols["ask"][index], cols["qty"][index]
        symbol = np.char.add(b"I", np.char.zfill(cols["instrument"][index].astype("S7"), 7))
        locate = (cols["instrument"][index].astype(np.int64) % 0xFFFF) + 1
        for level in range(int(n_updates.max(initial=0))):
            mine = np.flatnonzero(n_updates > level)
            on_bid = level % 2 == 0
            depth = level // 2
            add = np.zeros(mine.size, np.dtype([("length", ">u2"), ("message", ADD_ORDER.dtype)]))
            m = add["message"]
            add["length"], m["message_type"], m["stock_locate"] = ADD_ORDER.size, b"A", locate[mine]
            m["timestamp"] = stamp_bytes[mine].copy().view("V6").ravel()
            m["order_ref"], m["side"], m["shares"], m["stock"] = seq[mine] + level, BUY if on_bid else SELL, \
                qty[mine, min(level, 4)], symbol[mine]
            price = bid[mine] - depth * tick if on_bid else ask[mine] + depth * tick
            m["price"] = price // PRICE_SCALE
            _put(out, where[mine] + MOLD_HEADER.size + level * (BLOCK_BYTES + ADD_ORDER.size),
                 add.view(np.uint8).reshape(mine.size, -1))
        traded = np.flatnonzero(n_trades > 0)
        executed = np.zeros(traded.size, np.dtype([("length", ">u2"), ("message", ORDER_EXECUTED.dtype)]))
        e = executed["message"]
        executed["length"], e["message_type"], e["stock_locate"] = ORDER_EXECUTED.size, b"E", locate[traded]
        e["timestamp"] = stamp_bytes[traded].copy().view("V6").ravel()
        e["order_ref"] = seq[traded] + np.where(cols["aggressor"][index][traded] == 1, 1, 0)   # a buyer takes the ask
        e["executed_shares"], e["match_number"] = qty[traded, 5], seq[traded] + n_updates[traded]
        _put(out, where[traded] + MOLD_HEADER.size + n_updates[traded] * (BLOCK_BYTES + ADD_ORDER.size),
             executed.view(np.uint8).reshape(traded.size, -1))
        return out, where

    def from_l2(self, datagrams: list) -> tuple[list[bytes], list[int], list[int]]:
        """Each datagram's changes as order events: one resting order per price level. A trade first
        executes the order it took (E; P when no order there can take it), then each level's new
        quantity is an Add (A), a Cancel of shares (X), a Replace to more shares (U) or a Delete (D)."""
        from engine.protocol.md import ASK, BID, SET
        levels: dict[tuple, tuple[int, int]] = {}              # (venue, locate, side, price) -> (ref, shares)
        next_ref: dict[int, int] = {}
        next_seq: dict[int, int] = {}
        packets, seqs, told = [], [], []
        for index, d in enumerate(datagrams):
            if not 0 < d.instrument <= 0xFFFF:
                raise ProtocolError(f"instrument {d.instrument} is not an ITCH Stock Locate (1-65535)")
            messages = []

            def ref() -> int:
                next_ref[d.venue] = next_ref.get(d.venue, 0) + 1
                return next_ref[d.venue]

            def message(layout: Layout, *fields) -> None:
                messages.append(layout.struct.pack(*fields))

            for trade in d.trades:
                side = {BID: b"S", ASK: b"B"}.get(trade.aggressor)          # the side of the order it took
                key = (d.venue, d.instrument, side, trade.price)
                order = levels.get(key)
                if order and order[1] >= trade.qty:
                    message(ORDER_EXECUTED, b"E", d.instrument, 0, bytes(6), order[0], trade.qty, ref())
                    levels[key] = (order[0], order[1] - trade.qty)
                    if levels[key][1] == 0:                              # executed in full: gone
                        del levels[key]
                else:
                    message(TRADE, b"P", d.instrument, 0, bytes(6), 0, side or b"B", trade.qty,
                            b"I%07d" % d.instrument, trade.price // PRICE_SCALE, ref())
            for update in d.updates:
                side = b"B" if update.side == BID else b"S"
                key = (d.venue, d.instrument, side, update.price)
                qty = update.qty if update.action == SET else 0
                order = levels.get(key)
                shares = order[1] if order else 0
                if qty == shares:
                    pass
                elif qty == 0:
                    message(ORDER_DELETE, b"D", d.instrument, 0, bytes(6), order[0])
                elif order is None:
                    new_ref = ref()
                    message(ADD_ORDER, b"A", d.instrument, 0, bytes(6), new_ref, side, qty, b"I%07d" % d.instrument,
                            update.price // PRICE_SCALE)
                    levels[key] = (new_ref, qty)
                elif qty < shares:
                    message(ORDER_CANCEL, b"X", d.instrument, 0, bytes(6), order[0], shares - qty)
                    levels[key] = (order[0], qty)
                else:
                    new_ref = ref()
                    message(ORDER_REPLACE, b"U", d.instrument, 0, bytes(6), order[0], new_ref, qty,
                            update.price // PRICE_SCALE)
                    levels[key] = (new_ref, qty)
                if qty == 0:
                    levels.pop(key, None)
            if messages:
                first = next_seq.get(d.venue, 1)
                packets.append(encode_packet(self.SESSION, first, messages))
                seqs.append(first)
                told.append(index)
                next_seq[d.venue] = first + len(messages)
        return packets, seqs, told

    def stamp(self, payload, seq=None, send_ts_ns=None) -> None:
        if seq is not None:
            MOLD_HEADER.put(payload, "sequence", seq)
        if send_ts_ns is not None:          # every message's Timestamp: ns since midnight (UTC)
            since_midnight = send_ts_ns % (86_400 * 10**9)
            found = frame_packets(payload, [0], [len(payload)])
            for at in found.at.tolist():
                payload[at + 5:at + 11] = since_midnight.to_bytes(6, "big")


def _put(out: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
    """Each row of `rows` into `out` from its offset in `at`."""
    out[(np.asarray(at, np.int64)[:, None] + np.arange(rows.shape[1])).ravel()] = rows.ravel()


def encode_packet(session: bytes, seq: int, messages: list[bytes]) -> bytes:
    """One MoldUDP64 packet of whole ITCH messages (MOLD_HEADER, then length-prefixed blocks)."""
    if len(session) != 10:
        raise ProtocolError(f"MoldUDP64 session {session!r} is not 10 bytes")
    return (MOLD_HEADER.struct.pack(session, seq, len(messages))
            + b"".join(struct.pack(">H", len(m)) + m for m in messages))


PROTOCOL = Itch50MarketData()
