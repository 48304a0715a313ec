"""Binary order entry over TCP: NewOrder, Cancel, Ack, Fill, Reject.

Every message starts with `length u16` (whole message, this field included) and
`msg_type u8`, and has a fixed size per type. All sizes are multiples of 8, so in
a stream every message starts at a multiple of 8 from the stream's start.

NewOrder puts its decision-free prefix first (length, type, flags, account,
client order id: all known before the trading decision), so a sender may put
the prefix on the wire early and the rest once it has decided (tcp-prefix).
The decision part starts with `trigger_seq`: the seq of the MD datagram that
triggered the order. See docs/protocol.md.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from engine.messages import BUY, DAY, IOC, SELL
from engine.protocol.errors import ProtocolError
from engine.protocol.layout import Field, Layout, as_bytes_array, gather
from engine.protocol.registry import OrderProtocol, VenueReplies, VenueRequest
from engine.protocol.stream import StreamFrames, follow_chain

FLAG_PREFIX_EARLY = 0x01         # the sender put the prefix on the wire before deciding

NEW_ORDER_TYPE, CANCEL_TYPE, ACK_TYPE, FILL_TYPE, REJECT_TYPE = (ord(c) for c in "NCAFR")

_LENGTH = Field("length", 0, "<u2", "bytes in this message, this field included")

def _type_field(letter: str) -> Field:
    return Field("msg_type", 2, "u1", f'b"{letter}"')


NEW_ORDER = Layout("NewOrder", 48, [
    _LENGTH, _type_field("N"),
    Field("flags", 3, "u1", "bit 0: prefix sent ahead of the rest; other bits 0"),
    Field("account", 4, "<u4", "trading account"),
    Field("client_order_id", 8, "<u8", "the sender's id for this order, unique per session"),
    Field("trigger_seq", 16, "<u8", "seq of the MD datagram that triggered this order"),
    Field("instrument", 24, "<u4", "instrument id"),
    Field("side", 28, "u1", "1 buy, 2 sell"),
    Field("time_in_force", 29, "u1", "0 day, 3 immediate-or-cancel"),
    Field("price", 32, "<i8", "limit price in ticks of 1e-8"),
    Field("qty", 40, "<i8", "quantity"),
])
CANCEL = Layout("Cancel", 32, [
    _LENGTH, _type_field("C"),
    Field("flags", 3, "u1", "bit 0: prefix sent ahead of the rest; other bits 0"),
    Field("account", 4, "<u4", "trading account"),
    Field("client_order_id", 8, "<u8", "the sender's id for this cancel request"),
    Field("trigger_seq", 16, "<u8", "seq of the MD datagram that triggered this cancel"),
    Field("orig_client_order_id", 24, "<u8", "client_order_id of the order to cancel"),
])
ACK = Layout("Ack", 32, [
    _LENGTH, _type_field("A"),
    Field("acked_type", 3, "u1", 'b"N" (order accepted) or b"C" (order cancelled)'),
    Field("client_order_id", 8, "<u8", "client_order_id of the acknowledged request"),
    Field("venue_order_id", 16, "<u8", "the venue's id for the order"),
    Field("venue_ts_ns", 24, "<i8", "venue's clock at the event, ns since the Unix epoch"),
])
FILL = Layout("Fill", 64, [
    _LENGTH, _type_field("F"),
    Field("side", 3, "u1", "1 buy, 2 sell"),
    Field("client_order_id", 8, "<u8", "client_order_id of the filled order"),
    Field("venue_order_id", 16, "<u8", "the venue's id for the order"),
    Field("exec_id", 24, "<u8", "the venue's id for this execution"),
    Field("price", 32, "<i8", "execution price in ticks of 1e-8"),
    Field("qty", 40, "<i8", "quantity filled by this execution"),
    Field("leaves_qty", 48, "<i8", "quantity still open"),
    Field("venue_ts_ns", 56, "<i8", "venue's clock at the execution, ns since the Unix epoch"),
])
REJECT = Layout("Reject", 24, [
    _LENGTH, _type_field("R"),
    Field("rejected_type", 3, "u1", 'b"N" or b"C": the kind of request rejected'),
    Field("reason", 4, "<u4", "reject reason code (venue-defined, nonzero)"),
    Field("client_order_id", 8, "<u8", "client_order_id of the rejected request"),
    Field("venue_ts_ns", 16, "<i8", "venue's clock at the reject, ns since the Unix epoch"),
])

LAYOUTS: dict[int, Layout] = {NEW_ORDER_TYPE: NEW_ORDER, CANCEL_TYPE: CANCEL, ACK_TYPE: ACK,
                              FILL_TYPE: FILL, REJECT_TYPE: REJECT}
NEW_ORDER_DTYPE, CANCEL_DTYPE, ACK_DTYPE, FILL_DTYPE, REJECT_DTYPE = (
    layout.dtype for layout in (NEW_ORDER, CANCEL, ACK, FILL, REJECT))

NEW_ORDER_SIZE = NEW_ORDER.size
NEW_ORDER_PREFIX_BYTES = NEW_ORDER.offset("trigger_seq")
NEW_ORDER_TRIGGER_SEQ_OFFSET = NEW_ORDER.offset("trigger_seq")
NEW_ORDER_QTY_OFFSET = NEW_ORDER.offset("qty")
MESSAGE_ALIGN = 8
HEADER_BYTES = 3                 # length + msg_type: what the framer reads of each message

SIZE_BY_TYPE = np.zeros(256, np.int64)           # 0 = unknown type
for _type, _layout in LAYOUTS.items():
    assert _layout.size % MESSAGE_ALIGN == 0, _layout.name
    SIZE_BY_TYPE[_type] = _layout.size
_HEADER_KEYS = [np.uint32(layout.size | msg_type << 16) for msg_type, layout in LAYOUTS.items()]


@dataclass(frozen=True)
class NewOrder:
    account: int
    client_order_id: int
    trigger_seq: int
    instrument: int
    side: int
    price: int
    qty: int
    time_in_force: int = IOC
    flags: int = 0

    def encode(self) -> bytes:
        if self.side not in (BUY, SELL):
            raise ProtocolError(f"side {self.side} is not 1 (buy) or 2 (sell)")
        if self.time_in_force not in (DAY, IOC):
            raise ProtocolError(f"time_in_force {self.time_in_force} is not 0 (day) or 3 (IOC)")
        return _pack(self, NEW_ORDER_TYPE)


@dataclass(frozen=True)
class Cancel:
    account: int
    client_order_id: int
    trigger_seq: int
    orig_client_order_id: int
    flags: int = 0

    def encode(self) -> bytes:
        return _pack(self, CANCEL_TYPE)


@dataclass(frozen=True)
class Ack:
    acked_type: int
    client_order_id: int
    venue_order_id: int
    venue_ts_ns: int

    def encode(self) -> bytes:
        if self.acked_type not in (NEW_ORDER_TYPE, CANCEL_TYPE):
            raise ProtocolError(f"acked_type {self.acked_type} is not b'N' or b'C'")
        return _pack(self, ACK_TYPE)


@dataclass(frozen=True)
class Fill:
    side: int
    client_order_id: int
    venue_order_id: int
    exec_id: int
    price: int
    qty: int
    leaves_qty: int
    venue_ts_ns: int

    def encode(self) -> bytes:
        if self.side not in (BUY, SELL):
            raise ProtocolError(f"side {self.side} is not 1 (buy) or 2 (sell)")
        return _pack(self, FILL_TYPE)


@dataclass(frozen=True)
class Reject:
    rejected_type: int
    reason: int
    client_order_id: int
    venue_ts_ns: int

    def encode(self) -> bytes:
        if self.rejected_type not in (NEW_ORDER_TYPE, CANCEL_TYPE):
            raise ProtocolError(f"rejected_type {self.rejected_type} is not b'N' or b'C'")
        return _pack(self, REJECT_TYPE)


OrderMessage = NewOrder | Cancel | Ack | Fill | Reject
MESSAGE_CLASSES: dict[int, type] = {NEW_ORDER_TYPE: NewOrder, CANCEL_TYPE: Cancel, ACK_TYPE: Ack,
                                    FILL_TYPE: Fill, REJECT_TYPE: Reject}


def _pack(message, msg_type: int) -> bytes:
    layout = LAYOUTS[msg_type]
    values = {f.name: getattr(message, f.name) for f in fields(message)}
    try:
        return layout.pack(length=layout.size, msg_type=msg_type, **values)
    except OverflowError as exc:
        raise ProtocolError(f"{layout.name}: a value does not fit its field: {exc}") from None


def decode_order(buf) -> OrderMessage:
    """Decode exactly one order-entry message, checking its type, length and codes."""
    data = as_bytes_array(buf)
    if data.size < HEADER_BYTES:
        raise ProtocolError(f"order message of {data.size} bytes is shorter than its "
                            f"{HEADER_BYTES}-byte header", 0)
    length, msg_type = int(data[0]) | int(data[1]) << 8, int(data[2])
    _check_header(length, msg_type, 0)
    if data.size != length:
        raise ProtocolError(f"{LAYOUTS[msg_type].name} length field says {length} bytes "
                            f"but {data.size} were given", 0)
    record = gather(data, [0], LAYOUTS[msg_type].dtype)[0]
    cls = MESSAGE_CLASSES[msg_type]
    message = cls(**{f.name: int(record[f.name]) for f in fields(cls)})
    _check_codes(message)
    return message


def _check_header(length: int, msg_type: int, offset: int) -> None:
    if length < HEADER_BYTES:
        raise ProtocolError(f"order message length {length} is shorter than the "
                            f"{HEADER_BYTES}-byte header", offset)
    if SIZE_BY_TYPE[msg_type] == 0:
        raise ProtocolError(f"unknown order message type {msg_type:#04x}", offset + 2)
    if length != SIZE_BY_TYPE[msg_type]:
        raise ProtocolError(f"{LAYOUTS[msg_type].name} length field says {length} bytes, "
                            f"the message is {SIZE_BY_TYPE[msg_type]}", offset)


def _check_codes(message: OrderMessage) -> None:
    try:
        message.encode()       # the encoder's checks of side, time in force and kinds
    except ProtocolError as exc:
        raise ProtocolError(f"{type(message).__name__}: {exc}") from None


def decode_orders(data, offsets, msg_type: int) -> np.ndarray:
    """Many messages of one type at once: a structured array, one row per offset.

    Raises ProtocolError if any row's length or type field is not that type's.
    """
    layout = LAYOUTS.get(msg_type)
    if layout is None:
        raise ProtocolError(f"unknown order message type {msg_type:#04x}")
    records = gather(data, offsets, layout.dtype)
    wrong = (records["msg_type"] != msg_type) | (records["length"] != layout.size)
    if wrong.any():
        at = int(np.asarray(offsets)[np.argmax(wrong)])
        raise ProtocolError(f"not a {layout.name}: length {records['length'][np.argmax(wrong)]}, "
                            f"type {records['msg_type'][np.argmax(wrong)]:#04x}", at)
    return records


def decode_new_orders(data, offsets) -> np.ndarray:
    """Many NewOrders at once: a NEW_ORDER_DTYPE array."""
    return decode_orders(data, offsets, NEW_ORDER_TYPE)


def frame_order_stream(stream, start: int = 0) -> StreamFrames:
    """Cut a reassembled TCP byte stream into order-entry messages, from `start`.

    Vectorised (see engine.protocol.stream): every 8-aligned position whose
    length and type fields name a known message is a candidate; the chain from
    `start` is the stream's messages. Framing stops at the first position whose
    header is bad (zero, short or wrong length, unknown type): that is reported
    in `error`/`error_offset`, with the messages before it. An incomplete last
    message is not an error: it is left in `tail_bytes`.
    """
    data = np.ascontiguousarray(as_bytes_array(stream))
    size = data.size
    body = data[start:]
    slots = (body.size - 4) // MESSAGE_ALIGN + 1 if body.size >= 4 else 0
    key = np.ndarray((slots,), "<u4", buffer=body, strides=(MESSAGE_ALIGN,)) & np.uint32(0xFFFFFF)
    candidate = np.zeros(slots, bool)
    for header_key in _HEADER_KEYS:             # length | msg_type << 16 of each known type
        candidate |= key == header_key
    slot = np.flatnonzero(candidate)
    end_slot = slot + (key[slot] & 0xFFFF) // MESSAGE_ALIGN
    index_of_slot = np.full(slots + 1, slot.size, np.int32 if slot.size < 2**31 else np.int64)
    index_of_slot[slot] = np.arange(slot.size)
    successor = index_of_slot[np.minimum(end_slot, slots)]
    chain = follow_chain(successor, 0) if slot.size and slot[0] == 0 else slot[:0]
    starts = start + slot * MESSAGE_ALIGN
    ends = start + end_slot * MESSAGE_ALIGN
    incomplete = bool(chain.size) and ends[chain[-1]] > size
    if incomplete:
        chain = chain[:-1]
    consumed = int(ends[chain[-1]]) if chain.size else start
    error = error_offset = None
    if not incomplete and size - consumed >= HEADER_BYTES:
        try:        # the header here is bad, or it would have continued the chain
            _check_header(int(data[consumed]) | int(data[consumed + 1]) << 8,
                          int(data[consumed + 2]), consumed)
        except ProtocolError as exc:
            error, error_offset = str(exc), exc.offset
    return StreamFrames(offset=starts[chain], length=ends[chain] - starts[chain],
                        msg_type=data[starts[chain] + 2], consumed=consumed, stream_bytes=size,
                        error=error, error_offset=error_offset)


def _int64_at(stream, offsets) -> np.ndarray:
    """Little-endian 8-byte integers at each offset (all inside the stream), as int64."""
    return gather(stream, offsets, np.dtype("<i8"))


class BinaryOrders(OrderProtocol):
    name = "binary"
    title = "the lab's binary order entry"
    framing = "every message starts with length u16 and msg_type u8; one size per type, 8-byte aligned"
    sniff_bytes = HEADER_BYTES
    prefix_bytes = NEW_ORDER_PREFIX_BYTES
    layouts = (NEW_ORDER, CANCEL, ACK, FILL, REJECT)

    def sniff(self, head: bytes) -> bool:
        """Any message of this protocol, the venue's replies included, with its type's length."""
        return len(head) >= HEADER_BYTES and SIZE_BY_TYPE[head[2]] != 0 and head[0] | head[1] << 8 == SIZE_BY_TYPE[head[2]]

    def frame(self, stream) -> StreamFrames:
        return frame_order_stream(stream)

    def new_orders(self, stream, frames, trigger_tag=None):
        new = np.flatnonzero(frames.msg_type == NEW_ORDER_TYPE)
        at = frames.offset[new]
        return new, _int64_at(stream, at + NEW_ORDER_QTY_OFFSET), _int64_at(stream, at + NEW_ORDER_TRIGGER_SEQ_OFFSET)

    def client(self, account: int, sender: str, target: str) -> BinaryClient:
        return BinaryClient(account)

    def server(self) -> BinaryServer:
        return BinaryServer()

    new_order_bytes = NEW_ORDER_SIZE

    def synth_orders(self, order: dict, decided_ns, first_bit_ns) -> np.ndarray:
        records = np.zeros(len(decided_ns), NEW_ORDER_DTYPE)
        records["length"], records["msg_type"], records["time_in_force"] = NEW_ORDER_SIZE, NEW_ORDER_TYPE, IOC
        for name in ("account", "client_order_id", "trigger_seq", "instrument", "side", "price", "qty"):
            records[name] = order[name]
        return records.view(np.uint8)

    def synth_replies(self, order: dict, rejected, filled, venue_ts_ns):
        first_len = np.where(rejected, REJECT.size, ACK.size)
        fill_len = np.where(filled, FILL.size, 0)
        rejects = np.zeros(int(rejected.sum()), REJECT_DTYPE)
        rejects["length"], rejects["msg_type"] = REJECT.size, REJECT_TYPE
        rejects["rejected_type"], rejects["reason"] = NEW_ORDER_TYPE, 3
        rejects["client_order_id"], rejects["venue_ts_ns"] = order["client_order_id"][rejected], venue_ts_ns[rejected]
        accepted = ~rejected
        acks = np.zeros(int(accepted.sum()), ACK_DTYPE)
        acks["length"], acks["msg_type"], acks["acked_type"] = ACK.size, ACK_TYPE, NEW_ORDER_TYPE
        acks["client_order_id"] = order["client_order_id"][accepted]
        acks["venue_order_id"], acks["venue_ts_ns"] = order["venue_order_id"][accepted], venue_ts_ns[accepted]
        fills = np.zeros(int(filled.sum()), FILL_DTYPE)
        fills["length"], fills["msg_type"] = FILL.size, FILL_TYPE
        for name in ("side", "client_order_id", "venue_order_id", "exec_id", "price", "qty"):
            fills[name] = order[name][filled]
        fills["venue_ts_ns"] = venue_ts_ns[filled]
        # Which record each stream byte belongs to: 0 reject, 1 ack, 2 fill, 3 none.
        kind = np.repeat(np.stack([np.where(rejected, 0, 1), np.where(filled, 2, 3)], axis=1).ravel(),
                         np.stack([first_len, fill_len], axis=1).ravel())
        stream = np.zeros(kind.size, np.uint8)
        for code, records in ((0, rejects), (1, acks), (2, fills)):
            stream[kind == code] = records.view(np.uint8)
        return stream, first_len, fill_len


class BinaryClient:
    """One session's binary order entry, as the engine's gateway sends it."""
    _new_order, _cancel = NEW_ORDER.struct.pack, CANCEL.struct.pack
    _ack, _fill, _reject = ACK.struct.unpack, FILL.struct.unpack, REJECT.struct.unpack

    order_bytes = NEW_ORDER_SIZE

    def __init__(self, account: int):
        self.account = account

    def login(self) -> bytes:
        return b""                                     # the session starts with the first order

    def order(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        return self._new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, 0, self.account, wire_id, md_seq, instrument, side,
                               tif, price, qty)

    def rest(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        """The primed order's bytes after its prefix."""
        return self._new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, FLAG_PREFIX_EARLY, self.account, wire_id, md_seq,
                               instrument, side, tif, price, qty)[NEW_ORDER_PREFIX_BYTES:]

    def prefix(self, wire_id: int) -> bytes:
        return self._new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, FLAG_PREFIX_EARLY, self.account, wire_id,
                               0, 0, 0, 0, 0, 0)[:NEW_ORDER_PREFIX_BYTES]

    def void(self, wire_id: int) -> bytes:
        """The rest of the primed order, with quantity 0: the venue discards it."""
        return self._new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, FLAG_PREFIX_EARLY, self.account, wire_id,
                               0, 0, 0, 0, 0, 0)[NEW_ORDER_PREFIX_BYTES:]

    def cancel(self, wire_id, md_seq, target_wire, instrument, side, qty) -> bytes:
        return self._cancel(CANCEL.size, CANCEL_TYPE, 0, self.account, wire_id, md_seq, target_wire)

    def replies(self, inbox) -> VenueReplies:
        events, at, unexpected = [], 0, 0
        while len(inbox) - at >= HEADER_BYTES:
            length, kind = inbox[at] | inbox[at + 1] << 8, inbox[at + 2]
            if length < MESSAGE_ALIGN or SIZE_BY_TYPE[kind] != length:
                return VenueReplies(events, at, 1, unexpected, True)      # cannot be re-synchronised
            if len(inbox) - at < length:
                break
            message = bytes(inbox[at:at + length])
            if kind == ACK_TYPE:
                _len, _type, acked, wire_id, venue_order, _ts = self._ack(message)
                events.append(("X" if acked == CANCEL_TYPE else "A", wire_id, venue_order, 0, 0, 0, 0))
            elif kind == FILL_TYPE:
                _len, _type, side, wire_id, venue_order, _exec, price, qty, leaves, _ts = self._fill(message)
                events.append(("F", wire_id, venue_order, side, price, qty, leaves))
            elif kind == REJECT_TYPE:
                events.append(("R", self._reject(message)[4], 0, 0, 0, 0, 0))
            else:
                unexpected += 1
            at += length
        return VenueReplies(events, at, 0, unexpected, False)


class BinaryServer:
    """One connection's binary order entry, as the venue reads it and answers."""

    def message_size(self, inbox) -> int | None:
        if len(inbox) < HEADER_BYTES:
            return None
        length, msg_type = inbox[0] | inbox[1] << 8, inbox[2]
        if msg_type not in (NEW_ORDER_TYPE, CANCEL_TYPE):
            raise ProtocolError(f"unknown order entry type {msg_type:#04x}")
        if length != SIZE_BY_TYPE[msg_type]:
            raise ProtocolError(f"order entry length {length} is not {SIZE_BY_TYPE[msg_type]}")
        return length if len(inbox) >= length else None

    def request(self, message: bytes) -> VenueRequest:
        if message[2] == CANCEL_TYPE:
            cancel = gather(message, [0], CANCEL_DTYPE)[0]
            return VenueRequest("cancel", int(cancel["client_order_id"]), int(cancel["trigger_seq"]),
                                orig_client_order_id=int(cancel["orig_client_order_id"]))
        order = gather(message, [0], NEW_ORDER_DTYPE)[0]      # codes are the matching engine's to check
        return VenueRequest("void" if order["qty"] == 0 else "new", int(order["client_order_id"]),
                            int(order["trigger_seq"]), int(order["instrument"]), int(order["side"]),
                            int(order["price"]), int(order["qty"]), int(order["time_in_force"]))

    def reply(self, event) -> bytes:
        if event.kind == "ack":
            return Ack(NEW_ORDER_TYPE, event.client_order_id, event.venue_order_id, event.venue_ts_ns).encode()
        if event.kind == "cancelled":
            return Ack(CANCEL_TYPE, event.client_order_id, event.venue_order_id, event.venue_ts_ns).encode()
        if event.kind == "fill":
            return Fill(event.side, event.client_order_id, event.venue_order_id, event.exec_id, event.price,
                        event.qty, event.leaves_qty, event.venue_ts_ns).encode()
        request_type = NEW_ORDER_TYPE if event.request == "new" else CANCEL_TYPE
        return Reject(request_type, event.reason, event.client_order_id, event.venue_ts_ns).encode()


PROTOCOL = BinaryOrders()
