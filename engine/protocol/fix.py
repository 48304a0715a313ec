"""FIX 4.2 NewOrderSingle (35=D), OrderCancelRequest (35=F) and ExecutionReport (35=8) with
fixed-width values.

Every value has a fixed width (numbers zero-padded, ids of fixed length,
timestamps to the millisecond), so every message of a type has the same length
and the same field offsets, and the decision-free prefix of a NewOrderSingle
(everything up to and including TimeInForce) has a known length ahead of time.
The triggering MD seq travels in user-defined tag 9001. BodyLength (9) and
CheckSum (10) are computed as FIX 4.2 defines them. See docs/protocol.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.messages import IOC
from engine.protocol.errors import ProtocolError
from engine.protocol.layout import as_bytes_array, gather
from engine.protocol.registry import OrderProtocol, VenueReplies, VenueRequest
from engine.protocol.stream import StreamFrames, stream_chain

SOH = b"\x01"
BEGIN_STRING = b"FIX.4.2"
TRIGGER_SEQ_TAG = 9001
ORDER_QTY_TAG = 38
COMP_ID_WIDTH = 8                 # SenderCompID, TargetCompID
SYMBOL_WIDTH = 8
ID_WIDTH = 18                     # ClOrdID, OrderID, ExecID, 9001: every value fits an int64
PRICE_DECIMALS = 8                # prices are int64 ticks of 1e-8, as in the binary formats
TICKS_PER_UNIT = 10**PRICE_DECIMALS
NS_PER_MS = 10**6


@dataclass(frozen=True)
class FixField:
    tag: int
    name: str
    kind: str         # const | int | str | price | time | length | checksum
    width: int        # characters of the value
    value: bytes = b""  # the value of a const field

    @property
    def size(self) -> int:
        return len(str(self.tag)) + 1 + self.width + 1


def _const(tag: int, name: str, value: bytes) -> FixField:
    return FixField(tag, name, "const", len(value), value)


_HEADER = [
    _const(8, "begin_string", BEGIN_STRING),
    FixField(9, "body_length", "length", 3),
]
_SESSION = [
    FixField(49, "sender", "str", COMP_ID_WIDTH),
    FixField(56, "target", "str", COMP_ID_WIDTH),
    FixField(34, "msg_seq_num", "int", 9),
    FixField(52, "sending_time_ns", "time", 21),     # YYYYMMDD-HH:MM:SS.sss
]
_CHECKSUM = FixField(10, "checksum", "checksum", 3)


class FixLayout:
    """The fixed sequence of fields of one message type, with every offset known."""

    def __init__(self, name: str, msg_type: bytes, fields: list[FixField], prefix_until: int | None):
        self.name, self.msg_type = name, msg_type
        self.fields = tuple(_HEADER + [_const(35, "msg_type", msg_type)] + _SESSION + fields
                            + [_CHECKSUM])
        self.size = sum(f.size for f in self.fields)
        body = self.size - _HEADER[0].size - _HEADER[1].size - _CHECKSUM.size
        if len(str(body)) != _HEADER[1].width:
            raise ValueError(f"{name}: body length {body} is not {_HEADER[1].width} digits")
        self.body_length = body
        self.value_offset: dict[str, int] = {}
        position = 0
        for field in self.fields:
            self.value_offset[field.name] = position + len(str(field.tag)) + 1
            position += field.size
        self.prefix_bytes = None       # bytes up to and including the field `prefix_until`
        if prefix_until is not None:
            last = next(f for f in self.fields if f.tag == prefix_until)
            self.prefix_bytes = self.value_offset[last.name] + last.width + 1
        self.template = self._template()
        self.dtype = np.dtype([(f.name, _column_format(f)) for f in self.fields
                               if f.kind not in ("const", "length", "checksum")])

    def _template(self) -> np.ndarray:
        """The bytes that never change (tags, '=', SOH, constants, separators); -1 elsewhere."""
        template = np.full(self.size, -1, np.int16)
        position = 0
        for field in self.fields:
            fixed = f"{field.tag}=".encode()
            template[position:position + len(fixed)] = list(fixed)
            start = position + len(fixed)
            if field.kind == "const":
                template[start:start + field.width] = list(field.value)
            elif field.kind == "length":
                template[start:start + field.width] = list(str(self.body_length).encode())
            elif field.kind == "price":
                template[start + field.width - PRICE_DECIMALS - 1] = ord(".")
            elif field.kind == "time":
                template[start + np.array([8, 11, 14, 17])] = list(b"-::.")
            template[start + field.width] = SOH[0]
            position += field.size
        return template

    def table(self) -> str:
        """The layout as a markdown table (offset of the value, width, tag, field)."""
        rows = ["| value offset | width | tag | field | value |", "|---:|---:|---:|---|---|"]
        for field in self.fields:
            value = {"const": field.value.decode(), "length": str(self.body_length),
                     "checksum": "sum of all bytes before `10=`, mod 256",
                     "time": "UTC `YYYYMMDD-HH:MM:SS.sss`",
                     "price": f"`{'0' * (field.width - PRICE_DECIMALS - 1)}.{'0' * PRICE_DECIMALS}`"
                     }.get(field.kind, f"{field.kind}, zero-padded" if field.kind == "int" else
                           f"{field.width} characters")
            rows.append(f"| {self.value_offset[field.name]} | {field.width} | {field.tag} | "
                        f"`{field.name}` | {value} |")
        return "\n".join(rows)


def _column_format(field: FixField) -> str:
    return f"S{field.width}" if field.kind == "str" else "<i8"


NEW_ORDER_SINGLE = FixLayout("NewOrderSingle", b"D", [
    FixField(1, "account", "int", 10),
    FixField(11, "client_order_id", "int", ID_WIDTH),
    _const(21, "handl_inst", b"1"),                  # automated, no intervention
    _const(40, "ord_type", b"2"),                    # limit
    FixField(59, "time_in_force", "int", 1),         # 0 day, 3 IOC
    FixField(TRIGGER_SEQ_TAG, "trigger_seq", "int", ID_WIDTH),
    FixField(55, "symbol", "str", SYMBOL_WIDTH),
    FixField(54, "side", "int", 1),                  # 1 buy, 2 sell
    FixField(38, "qty", "int", 10),
    FixField(44, "price", "price", 19),
    FixField(60, "transact_time_ns", "time", 21),
], prefix_until=59)
ORDER_CANCEL_REQUEST = FixLayout("OrderCancelRequest", b"F", [
    FixField(1, "account", "int", 10),
    FixField(41, "orig_client_order_id", "int", ID_WIDTH),   # the order to cancel
    FixField(11, "client_order_id", "int", ID_WIDTH),        # this request's own id
    FixField(TRIGGER_SEQ_TAG, "trigger_seq", "int", ID_WIDTH),
    FixField(55, "symbol", "str", SYMBOL_WIDTH),
    FixField(54, "side", "int", 1),                  # the order's side
    FixField(38, "qty", "int", 10),                  # the order's quantity
    FixField(60, "transact_time_ns", "time", 21),
], prefix_until=None)
EXECUTION_REPORT = FixLayout("ExecutionReport", b"8", [
    FixField(37, "order_id", "int", ID_WIDTH),
    FixField(11, "client_order_id", "int", ID_WIDTH),
    FixField(17, "exec_id", "int", ID_WIDTH),
    _const(20, "exec_trans_type", b"0"),             # new
    FixField(150, "exec_type", "str", 1),            # 0 new, 1 partial fill, 2 fill, 4 cancelled, 8 rejected
    FixField(39, "ord_status", "str", 1),            # the same codes
    FixField(55, "symbol", "str", SYMBOL_WIDTH),
    FixField(54, "side", "int", 1),
    FixField(38, "qty", "int", 10),
    FixField(32, "last_qty", "int", 10),
    FixField(31, "last_price", "price", 19),
    FixField(151, "leaves_qty", "int", 10),
    FixField(14, "cum_qty", "int", 10),
    FixField(6, "avg_price", "price", 19),
    FixField(60, "transact_time_ns", "time", 21),
], prefix_until=None)
LAYOUTS = {b"D": NEW_ORDER_SINGLE, b"F": ORDER_CANCEL_REQUEST, b"8": EXECUTION_REPORT}

NEW_ORDER_SINGLE_SIZE = NEW_ORDER_SINGLE.size
NEW_ORDER_SINGLE_PREFIX_BYTES = NEW_ORDER_SINGLE.prefix_bytes
NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET = NEW_ORDER_SINGLE.value_offset["trigger_seq"]
ORDER_CANCEL_REQUEST_SIZE = ORDER_CANCEL_REQUEST.size
EXECUTION_REPORT_SIZE = EXECUTION_REPORT.size
EXEC_TYPES = (b"0", b"1", b"2", b"4", b"8")


@dataclass(frozen=True)
class NewOrderSingle:
    sender: str
    target: str
    msg_seq_num: int
    sending_time_ns: int          # sent to the millisecond (FIX 4.2 UTCTimestamp)
    account: int
    client_order_id: int
    trigger_seq: int
    symbol: str
    side: int                     # 1 buy, 2 sell
    qty: int
    price: int                    # ticks of 1e-8
    transact_time_ns: int
    time_in_force: int = 3        # 0 day, 3 IOC

    def encode(self) -> bytes:
        if self.side not in (1, 2):
            raise ProtocolError(f"side {self.side} is not 1 (buy) or 2 (sell)")
        if self.time_in_force not in (0, 3):
            raise ProtocolError(f"time_in_force {self.time_in_force} is not 0 (day) or 3 (IOC)")
        return _encode(NEW_ORDER_SINGLE, self)

    def prefix(self) -> bytes:
        """The decision-free prefix: the bytes a tcp-prefix sender puts on the wire early."""
        return self.encode()[:NEW_ORDER_SINGLE_PREFIX_BYTES]


@dataclass(frozen=True)
class OrderCancelRequest:
    sender: str
    target: str
    msg_seq_num: int
    sending_time_ns: int
    account: int
    orig_client_order_id: int     # the order to cancel
    client_order_id: int          # the cancel request's own id
    trigger_seq: int
    symbol: str
    side: int                     # the order's side, 1 buy, 2 sell
    qty: int                      # the order's quantity
    transact_time_ns: int

    def encode(self) -> bytes:
        if self.side not in (1, 2):
            raise ProtocolError(f"side {self.side} is not 1 (buy) or 2 (sell)")
        return _encode(ORDER_CANCEL_REQUEST, self)


@dataclass(frozen=True)
class ExecutionReport:
    sender: str
    target: str
    msg_seq_num: int
    sending_time_ns: int
    order_id: int
    client_order_id: int
    exec_id: int
    exec_type: str                # "0" new, "1" partial fill, "2" fill, "4" cancelled, "8" rejected
    ord_status: str
    symbol: str
    side: int
    qty: int
    last_qty: int
    last_price: int
    leaves_qty: int
    cum_qty: int
    avg_price: int
    transact_time_ns: int

    def encode(self) -> bytes:
        for name in ("exec_type", "ord_status"):
            if getattr(self, name).encode() not in EXEC_TYPES:
                raise ProtocolError(f"{name} {getattr(self, name)!r} is not one of 0 1 2 4 8")
        return _encode(EXECUTION_REPORT, self)


MESSAGE_CLASSES = {b"D": NewOrderSingle, b"F": OrderCancelRequest, b"8": ExecutionReport}


def _format_value(field: FixField, value) -> bytes:
    """A field's value as its fixed-width text; ProtocolError if it does not fit."""
    if field.kind == "str":
        text = value.encode("ascii") if isinstance(value, str) else bytes(value)
        if len(text) != field.width or SOH in text or b"=" in text:
            raise ProtocolError(f"{field.name} {value!r} must be {field.width} characters "
                                f"without SOH or '='")
        return text
    value = int(value)
    if value < 0:
        raise ProtocolError(f"{field.name} {value} is negative; fixed-width FIX values are >= 0")
    if field.kind == "int":
        text = f"{value:0{field.width}d}"
    elif field.kind == "price":
        units, ticks = divmod(value, TICKS_PER_UNIT)
        text = f"{units:0{field.width - PRICE_DECIMALS - 1}d}.{ticks:0{PRICE_DECIMALS}d}"
    elif field.kind == "time":
        stamp = np.datetime64(value // NS_PER_MS, "ms").item()
        text = f"{stamp:%Y%m%d-%H:%M:%S}.{stamp.microsecond // 1000:03d}"
    else:
        raise ValueError(f"{field.name}: no value to format for a {field.kind} field")
    if len(text) != field.width:
        raise ProtocolError(f"{field.name} {value} does not fit {field.width} characters")
    return text.encode()


def _encode(layout: FixLayout, message) -> bytes:
    parts = []
    for field in layout.fields[:-1]:
        if field.kind == "const":
            value = field.value
        elif field.kind == "length":
            value = str(layout.body_length).encode()
        else:
            value = _format_value(field, getattr(message, field.name))
        parts.append(b"%d=%s\x01" % (field.tag, value))
    text = b"".join(parts)
    return text + b"10=%03d\x01" % (sum(text) % 256)


def parse_fix(buf) -> list[tuple[int, bytes]]:
    """Split one FIX message into (tag, value) pairs, checking its framing.

    Checks: BeginString first, BodyLength second and equal to the bytes from
    after it up to CheckSum, CheckSum last and equal to the byte sum mod 256,
    every field `tag=value` with a numeric tag and SOH-terminated.
    """
    text = bytes(buf)
    if not text.startswith(b"8=FIX."):
        raise ProtocolError("FIX message does not start with a BeginString (8=FIX.)", 0)
    if not text.endswith(SOH):
        raise ProtocolError("FIX message does not end with SOH", len(text))
    pairs, position = [], 0
    for raw in text[:-1].split(SOH):
        tag, equals, value = raw.partition(b"=")
        if not equals or not tag.isdigit() or not value:
            raise ProtocolError(f"malformed FIX field {raw[:40]!r}", position)
        pairs.append((int(tag), value))
        position += len(raw) + 1
    if len(pairs) < 4 or pairs[1][0] != 9 or pairs[-1][0] != 10:
        raise ProtocolError("FIX message needs BeginString, BodyLength first and CheckSum last", 0)
    body_start = len(b"8=") + len(pairs[0][1]) + 1 + len(b"9=") + len(pairs[1][1]) + 1
    checksum_start = len(text) - len(b"10=") - len(pairs[-1][1]) - 1
    if not pairs[1][1].isdigit() or int(pairs[1][1]) != checksum_start - body_start:
        raise ProtocolError(f"FIX BodyLength says {pairs[1][1].decode(errors='replace')}, "
                            f"the body has {checksum_start - body_start} bytes", body_start)
    checksum = sum(text[:checksum_start]) % 256
    if len(pairs[-1][1]) != 3 or not pairs[-1][1].isdigit() or int(pairs[-1][1]) != checksum:
        raise ProtocolError(f"FIX CheckSum says {pairs[-1][1].decode(errors='replace')}, "
                            f"the bytes sum to {checksum:03d}", checksum_start)
    return pairs


def decode_fix(buf) -> NewOrderSingle | OrderCancelRequest | ExecutionReport:
    """Decode one NewOrderSingle, OrderCancelRequest or ExecutionReport in this module's fixed layout."""
    pairs = parse_fix(buf)
    msg_type = pairs[2][1] if len(pairs) > 2 and pairs[2][0] == 35 else None
    layout = LAYOUTS.get(msg_type)
    if layout is None:
        raise ProtocolError(f"unsupported FIX MsgType {msg_type!r}; expected D, F or 8")
    if [tag for tag, _ in pairs] != [f.tag for f in layout.fields]:
        raise ProtocolError(f"FIX {layout.name} fields are not the fixed layout's "
                            f"{[f.tag for f in layout.fields]}")
    values = {}
    for field, (_, value) in zip(layout.fields, pairs):
        if len(value) != field.width:
            raise ProtocolError(f"FIX tag {field.tag} value {value!r} is not {field.width} wide",
                                layout.value_offset[field.name])
        if field.kind == "const" and value != field.value:
            raise ProtocolError(f"FIX tag {field.tag} is {value!r}, expected {field.value!r}",
                                layout.value_offset[field.name])
        if field.kind not in ("const", "length", "checksum"):
            values[field.name] = _parse_value(field, value, layout.value_offset[field.name])
    message = MESSAGE_CLASSES[msg_type](**values)
    message.encode()          # the encoder's checks of codes
    return message


def _parse_value(field: FixField, value: bytes, offset: int):
    if field.kind == "str" and value.isascii():     # the encoder writes ASCII alone: others are not valid
        return value.decode("ascii")
    if field.kind == "int" and value.isdigit():
        return int(value)
    if field.kind == "price":
        units, dot, ticks = value.partition(b".")
        if dot and units.isdigit() and ticks.isdigit() and len(ticks) == PRICE_DECIMALS:
            return int(units) * TICKS_PER_UNIT + int(ticks)
    if field.kind == "time":
        stamp_ns = _parse_time(value)
        if stamp_ns is not None:
            return stamp_ns
    raise ProtocolError(f"FIX tag {field.tag} value {value!r} is not a valid {field.kind}", offset)


def _parse_time(value: bytes) -> int | None:
    """UTCTimestamp YYYYMMDD-HH:MM:SS.sss -> ns since the epoch, None if malformed."""
    separators = value[8:9] + value[11:12] + value[14:15] + value[17:18]
    digits = value[:8] + value[9:11] + value[12:14] + value[15:17] + value[18:]
    if separators != b"-::." or not digits.isdigit() or len(digits) != 17:
        return None
    text = value.decode()
    try:
        stamp = np.datetime64(f"{text[:4]}-{text[4:6]}-{text[6:8]}T{text[9:]}", "ms")
    except ValueError:
        return None
    return int(stamp.astype(np.int64)) * NS_PER_MS


_CACHE_ROWS = 1 << 13            # messages handled per numpy pass: a block that stays in cache
_POWERS = 10 ** np.arange(19, dtype=np.int64)      # 10**0 .. 10**18
_ASCII_FOUR_DIGITS = np.frombuffer(b"".join(b"%04d" % i for i in range(10_000)), np.uint32)
_SECONDS_NS = (3600 * 10**9, 60 * 10**9, 10**9)


def decode_fix_messages(data, offsets, msg_type: bytes = b"D") -> np.ndarray:
    """Many messages of one type at once: a structured array of `LAYOUTS[msg_type].dtype`.

    Checks, per message, every fixed byte (tags, '=', SOH, constants, BodyLength),
    the CheckSum and that every number is digits; raises ProtocolError at the
    first message that fails. Ints, prices (ticks) and times (ns) come back as int64.
    """
    layout = LAYOUTS.get(msg_type)
    if layout is None:
        raise ProtocolError(f"unsupported FIX MsgType {msg_type!r}; expected D, F or 8")
    offsets = np.asarray(offsets, np.int64)
    out = np.zeros(offsets.size, layout.dtype)
    for first in range(0, offsets.size, _CACHE_ROWS):
        rows = offsets[first:first + _CACHE_ROWS]
        raw = gather(data, rows, np.dtype((np.void, layout.size))).view(np.uint8).reshape(-1, layout.size)
        _check_fixed_bytes(layout, raw, rows)
        chunk = out[first:first + _CACHE_ROWS]
        for field in layout.fields:
            if field.kind in ("const", "length", "checksum"):
                continue
            start = layout.value_offset[field.name]
            column = raw[:, start:start + field.width]
            if field.kind == "str":
                chunk[field.name] = np.ascontiguousarray(column).view(f"S{field.width}")[:, 0]
            elif field.kind == "int":
                chunk[field.name] = _digits_value(column, field, rows, start)
            elif field.kind == "price":
                units = _digits_value(column[:, :-PRICE_DECIMALS - 1], field, rows, start)
                ticks = _digits_value(column[:, -PRICE_DECIMALS:], field, rows, start)
                chunk[field.name] = units * TICKS_PER_UNIT + ticks
            else:
                chunk[field.name] = _time_value(column, field, rows, start)
    return out


def _check_fixed_bytes(layout: FixLayout, raw: np.ndarray, rows: np.ndarray) -> None:
    fixed = np.flatnonzero(layout.template >= 0)
    wrong = (raw[:, fixed] != layout.template[fixed]).any(axis=1)
    if wrong.any():
        i = int(np.argmax(wrong))
        column = fixed[np.argmax(raw[i, fixed] != layout.template[fixed])]
        raise ProtocolError(f"not a fixed-layout FIX {layout.name}: byte {column} differs",
                            int(rows[i] + column))
    checksum_at = layout.size - _CHECKSUM.size
    checksum = _digits_value(raw[:, checksum_at + 3:checksum_at + 6], _CHECKSUM, rows, checksum_at + 3)
    wrong = raw[:, :checksum_at].sum(axis=1, dtype=np.int64) % 256 != checksum
    if wrong.any():
        raise ProtocolError(f"FIX {layout.name} CheckSum does not match its bytes",
                            int(rows[np.argmax(wrong)] + checksum_at))


def _digits_value(column: np.ndarray, field: FixField, rows: np.ndarray, start: int) -> np.ndarray:
    digits = column - np.uint8(ord("0"))              # a non-digit wraps to > 9
    bad = (digits > 9).any(axis=1)
    if bad.any():
        raise ProtocolError(f"FIX tag {field.tag} holds a non-digit", int(rows[np.argmax(bad)] + start))
    return digits.astype(np.int64) @ _POWERS[column.shape[1] - 1::-1]


def _time_value(column: np.ndarray, field: FixField, rows: np.ndarray, start: int) -> np.ndarray:
    """YYYYMMDD-HH:MM:SS.sss columns -> int64 ns since the epoch, checking every part."""
    separators = column[:, [8, 11, 14, 17]]
    parts = [_digits_value(column[:, a:b], field, rows, start)
             for a, b in ((0, 4), (4, 6), (6, 8), (9, 11), (12, 14), (15, 17), (18, 21))]
    year, month, day, hour, minute, second, milli = parts
    months = (year - 1970) * 12 + month - 1
    days = (months.astype("M8[M]").astype("M8[D]") + (day - 1)).astype(np.int64)
    bad = ((separators != np.frombuffer(b"-::.", np.uint8)).any(axis=1) | (month < 1) | (month > 12)
           | (day < 1) | (days.astype("M8[D]").astype("M8[M]").astype(np.int64) != months)
           | (hour > 23) | (minute > 59) | (second > 59))
    if bad.any():
        raise ProtocolError(f"FIX tag {field.tag} is not a valid UTCTimestamp",
                            int(rows[np.argmax(bad)] + start))
    return (days * 86400 * 10**9 + hour * _SECONDS_NS[0] + minute * _SECONDS_NS[1]
            + second * _SECONDS_NS[2] + milli * NS_PER_MS)


_STREAM_START = b"8=FIX.4.2\x019="        # byte 8 is any digit: FIX 4.0 to 4.4
_VERSION_AT = 8
_MAX_LENGTH_DIGITS = 6


def frame_fix_stream(stream, start: int = 0) -> StreamFrames:
    """Cut a reassembled TCP byte stream into FIX 4.x messages, from `start`.

    Any FIX 4.0-4.4 message as a FIX engine writes it, not only the fixed layouts:
    a candidate is every occurrence of `8=FIX.4.n<SOH>9=` whose BodyLength leads to
    `10=nnn<SOH>`;
    the chain from `start` is the stream's messages (see engine.protocol.stream).
    `msg_type` holds the first byte of each MsgType (35). CheckSums are not
    checked here (decode_fix_messages and parse_fix do). An incomplete last
    message is left in `tail_bytes`; bytes that do not start a message stop
    framing with `error`.
    """
    data = as_bytes_array(stream)
    size = data.size
    pattern = np.frombuffer(_STREAM_START, np.uint8)
    # a start needs the whole pattern before the end (a shorter stream has none: a negative stop would
    # wrap to count from the end, and the pattern's later bytes would be read past it)
    head = np.flatnonzero(data[start:max(size - pattern.size + 1, start)] == pattern[0]) + start
    for i in range(1, pattern.size):
        byte = data[head + i]
        head = head[(byte >= ord("0")) & (byte <= ord("9")) if i == _VERSION_AT else byte == pattern[i]]
    digits_at = head + pattern.size
    window = _window(data, digits_at, _MAX_LENGTH_DIGITS + 1)
    is_digit = (window >= ord("0")) & (window <= ord("9"))
    n_digits = np.argmin(is_digit, axis=1)           # first non-digit
    ends_with_soh = window[np.arange(head.size), n_digits] == SOH[0]
    keep = (n_digits > 0) & ends_with_soh
    head, window, n_digits, digits_at = head[keep], window[keep], n_digits[keep], digits_at[keep]
    body_length = np.zeros(head.size, np.int64)
    for i in range(_MAX_LENGTH_DIGITS):
        inside = i < n_digits
        body_length = np.where(inside, body_length * 10 + window[:, i] - ord("0"), body_length)
    checksum_at = digits_at + n_digits + 1 + body_length
    ends = checksum_at + _CHECKSUM.size
    inside = ends <= size
    trailer = _window(data, np.where(inside, checksum_at, 0), _CHECKSUM.size)
    closed = (trailer[:, :3] == np.frombuffer(b"10=", np.uint8)).all(axis=1) & (trailer[:, 6] == SOH[0])
    keep = closed | ~inside                          # a message running past the end may be whole later
    starts, ends, type_at = head[keep], ends[keep], (digits_at + n_digits + 1 + 3)[keep]
    chain, incomplete, consumed = stream_chain(starts, ends, start, size)
    error = None
    if not incomplete and consumed < size and not _may_start_message(bytes(data[consumed:])):
        error = "bytes here do not start a FIX 4.x message with a valid BodyLength and CheckSum field"
    return StreamFrames(offset=starts[chain], length=ends[chain] - starts[chain],
                        msg_type=data[np.minimum(type_at[chain], size - 1)], consumed=consumed,
                        stream_bytes=size, error=error, error_offset=consumed if error else None)


def checksums_valid(stream, frames: StreamFrames) -> np.ndarray:
    """Whether each framed message's CheckSum (10) is the sum of its bytes before it, mod 256."""
    data = as_bytes_array(stream)
    if not len(frames):
        return np.zeros(0, bool)
    running = np.concatenate([[0], np.cumsum(data, dtype=np.int64)])
    checksum_at = frames.offset + frames.length - _CHECKSUM.size
    digits = _window(data, checksum_at + 3, 3).astype(np.int64) - ord("0")
    stated = digits @ np.array([100, 10, 1])
    return ((digits >= 0) & (digits <= 9)).all(axis=1) & ((running[checksum_at] - running[frames.offset]) % 256
                                                         == stated)


def _may_start_message(tail: bytes) -> bool:
    """Whether the stream's last bytes could be the start of a message still arriving."""
    for i, byte in enumerate(tail[:len(_STREAM_START)]):
        if not (48 <= byte <= 57 if i == _VERSION_AT else byte == _STREAM_START[i]):
            return False
    digits = tail[len(_STREAM_START):]
    return not digits or (digits.isdigit() and len(digits) <= _MAX_LENGTH_DIGITS)


def _window(data: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """(len(offsets), width) bytes from each offset; bytes past the end read as 0."""
    padded = np.concatenate([data[-width:] if data.size >= width else data, np.zeros(width, np.uint8)])
    tail_base = data.size - min(width, data.size)
    near_end = offsets + width > data.size
    out = np.zeros((offsets.size, width), np.uint8)
    if (~near_end).any():
        out[~near_end] = gather(data, offsets[~near_end], np.dtype((np.void, width))
                                ).view(np.uint8).reshape(-1, width)
    for row in np.flatnonzero(near_end):    # at most `width` distinct offsets near the end
        out[row] = padded[offsets[row] - tail_base:offsets[row] - tail_base + width]
    return out


def fix_tag_values(stream, offsets, lengths, tag: int) -> np.ndarray:
    """The integer value of `tag` in each message (first occurrence), -1 if absent or not a number.

    Vectorised over the whole stream: finds every `<SOH>tag=` and assigns it to
    the message that contains it. Values of up to 18 digits.
    """
    data = as_bytes_array(stream)
    offsets, lengths = np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)
    values = np.full(offsets.size, -1, np.int64)
    if offsets.size == 0:
        return values
    pattern = np.frombuffer(SOH + f"{tag}=".encode(), np.uint8)
    hits = np.flatnonzero(data[:max(data.size - pattern.size + 1, 0)] == pattern[0])
    for i in range(1, pattern.size):
        hits = hits[data[hits + i] == pattern[i]]
    message = np.searchsorted(offsets, hits, side="right") - 1
    inside = (message >= 0) & (hits < offsets[np.maximum(message, 0)] + lengths[np.maximum(message, 0)])
    hits, message = hits[inside], message[inside]
    first = np.unique(message, return_index=True)[1]
    hits, message = hits[first] + pattern.size, message[first]
    window = _window(data, hits, ID_WIDTH + 1)
    is_digit = (window >= ord("0")) & (window <= ord("9"))
    n_digits = np.argmin(is_digit, axis=1)
    ok = (n_digits > 0) & (window[np.arange(hits.size), n_digits] == SOH[0])
    value = np.zeros(hits.size, np.int64)
    for i in range(ID_WIDTH):
        value = np.where(i < n_digits, value * 10 + window[:, i] - ord("0"), value)
    values[message[ok]] = value[ok]
    return values


def encode_fix_batch(msg_type: bytes, count: int, **values) -> np.ndarray:
    """Many fixed-layout messages at once: a (count, size) uint8 array, one message per row.

    `values` gives every non-constant field by name: an int array (or one int)
    for numbers, prices (ticks) and times (ns), a str or an array of bytes for
    text fields. BodyLength and CheckSum are filled in.
    """
    layout = LAYOUTS.get(msg_type)
    if layout is None:
        raise ProtocolError(f"unsupported FIX MsgType {msg_type!r}; expected D, F or 8")
    missing = [f.name for f in layout.fields
               if f.kind not in ("const", "length", "checksum") and f.name not in values]
    if missing:
        raise TypeError(f"encode_fix_batch: no value for {', '.join(missing)}")
    columns = {}
    for field in layout.fields:
        if field.name not in values:
            continue
        if field.kind == "str":
            value = values[field.name]
            text = np.asarray(value.encode("ascii") if isinstance(value, str) else value, f"S{field.width}")
            raw = np.broadcast_to(text, (count,)).astype(f"S{field.width}").view(np.uint8)
            columns[field.name] = raw.reshape(count, field.width)
            if ((columns[field.name] == 0) | (columns[field.name] == SOH[0])
                    | (columns[field.name] == ord("="))).any():
                raise ProtocolError(f"{field.name} values must be {field.width} characters "
                                    f"without SOH or '='")
        else:
            columns[field.name] = np.broadcast_to(np.asarray(values[field.name], np.int64), (count,))
            if (columns[field.name] < 0).any():
                raise ProtocolError(f"{field.name} has a negative value; fixed-width FIX values are >= 0")
    out = np.empty((count, layout.size), np.uint8)
    for first in range(0, count, _CACHE_ROWS):      # row blocks that stay in cache
        rows = slice(first, first + _CACHE_ROWS)
        _encode_rows(layout, out[rows], {name: column[rows] for name, column in columns.items()})
    return out


def _encode_rows(layout: FixLayout, out: np.ndarray, columns: dict) -> None:
    out[:] = np.maximum(layout.template, 0).astype(np.uint8)
    for field in layout.fields:
        if field.name not in columns:
            continue
        start = layout.value_offset[field.name]
        column, value = out[:, start:start + field.width], columns[field.name]
        if field.kind == "str":
            column[:] = value
        elif field.kind == "int":
            _put_digits(column, value, field)
        elif field.kind == "price":
            units, ticks = np.divmod(value, TICKS_PER_UNIT)
            _put_digits(column[:, :-PRICE_DECIMALS - 1], units, field)
            _put_digits(column[:, -PRICE_DECIMALS:], ticks, field)
        else:
            _put_time(column, value, field)
    checksum_at = layout.size - _CHECKSUM.size
    _put_digits(out[:, checksum_at + 3:checksum_at + 6],
                out[:, :checksum_at].sum(axis=1, dtype=np.int64) % 256, _CHECKSUM)


def _put_digits(column: np.ndarray, number: np.ndarray, field: FixField) -> None:
    """Zero-padded decimal text of each number into a (count, width) column block."""
    width = column.shape[1]
    if (number >= 10**width).any():
        raise ProtocolError(f"{field.name} has a value that does not fit {width} digits")
    groups = -(-width // 4)
    text = np.empty((number.size, groups), np.uint32)     # 4 ASCII digits per group
    rest = number
    for group in range(groups - 1, -1, -1):
        rest, four_digits = np.divmod(rest, 10_000)
        text[:, group] = _ASCII_FOUR_DIGITS[four_digits]
    column[:] = text.view(np.uint8).reshape(number.size, 4 * groups)[:, 4 * groups - width:]


def _put_time(column: np.ndarray, stamp_ns: np.ndarray, field: FixField) -> None:
    """ns since the epoch -> YYYYMMDD-HH:MM:SS.sss (truncated to the millisecond)."""
    milli = stamp_ns // NS_PER_MS
    days = (milli // 86_400_000).astype("M8[D]")
    months = days.astype("M8[M]")
    years = months.astype("M8[Y]")
    ms_of_day = milli % 86_400_000
    parts = ((0, 4, years.astype(np.int64) + 1970),
             (4, 6, months.astype(np.int64) % 12 + 1),
             (6, 8, (days - months.astype("M8[D]")).astype(np.int64) + 1),
             (9, 11, ms_of_day // 3_600_000), (12, 14, ms_of_day // 60_000 % 60),
             (15, 17, ms_of_day // 1000 % 60), (18, 21, ms_of_day % 1000))
    for start, end, value in parts:
        _put_digits(column[:, start:end], value, field)


class FixOrders(OrderProtocol):
    name = "fix"
    title = "FIX 4.2 NewOrderSingle, OrderCancelRequest and ExecutionReport, fixed width"
    framing = "tag=value fields; 8=FIX.4.2, 9=BodyLength, then the body up to 10=CheckSum"
    sniff_bytes = len(b"8=FIX")
    prefix_bytes = NEW_ORDER_SINGLE_PREFIX_BYTES
    layouts = (NEW_ORDER_SINGLE, ORDER_CANCEL_REQUEST, EXECUTION_REPORT)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(b"8=FIX")

    def frame(self, stream) -> StreamFrames:
        return frame_fix_stream(stream)

    def problems(self, stream, frames) -> dict[str, int]:
        return {"bad_checksums": int(np.count_nonzero(~checksums_valid(stream, frames)))}

    def new_orders(self, stream, frames, trigger_tag=None):
        new = np.flatnonzero((frames.msg_type == ord("D")) & checksums_valid(stream, frames))
        offsets, lengths = frames.offset[new], frames.length[new]
        return (new, fix_tag_values(stream, offsets, lengths, ORDER_QTY_TAG),
                fix_tag_values(stream, offsets, lengths, trigger_tag or TRIGGER_SEQ_TAG))

    def client(self, account: int, sender: str, target: str) -> FixClient:
        return FixClient(account, sender, target)

    def server(self) -> FixServer:
        return FixServer()

    new_order_bytes = NEW_ORDER_SINGLE_SIZE
    SYNTH_IDS = ("WIRELAB1", "VENUEGW1")          # the synth host's and venue's CompIDs

    def synth_orders(self, order: dict, decided_ns, first_bit_ns) -> np.ndarray:
        host, venue = self.SYNTH_IDS
        n = len(decided_ns)
        return encode_fix_batch(
            b"D", n, sender=host, target=venue, msg_seq_num=2 + np.arange(n), sending_time_ns=first_bit_ns,
            account=order["account"], client_order_id=order["client_order_id"], time_in_force=IOC,
            trigger_seq=order["trigger_seq"].astype(np.int64), symbol=_symbols(order["instrument"]),
            side=order["side"], qty=order["qty"], price=order["price"], transact_time_ns=decided_ns).ravel()

    def synth_replies(self, order: dict, rejected, filled, venue_ts_ns):
        host, venue = self.SYNTH_IDS
        n = rejected.size
        row = np.repeat(np.arange(n), 1 + filled)
        is_fill = np.zeros(row.size, bool)
        is_fill[1:] = row[1:] == row[:-1]
        exec_type = np.where(is_fill, b"2", np.where(rejected[row], b"8", b"0"))
        qty, price = order["qty"][row], order["price"][row]
        stream = encode_fix_batch(
            b"8", row.size, sender=venue, target=host, msg_seq_num=2 + np.arange(row.size),
            sending_time_ns=venue_ts_ns[row], order_id=order["venue_order_id"][row],
            client_order_id=order["client_order_id"][row], exec_id=np.where(is_fill, order["exec_id"][row], 0),
            exec_type=exec_type, ord_status=exec_type, symbol=_symbols(order["instrument"][row]),
            side=order["side"][row], qty=qty, last_qty=np.where(is_fill, qty, 0),
            last_price=np.where(is_fill, price, 0), leaves_qty=np.where(is_fill | rejected[row], 0, qty),
            cum_qty=np.where(is_fill, qty, 0), avg_price=np.where(is_fill, price, 0),
            transact_time_ns=venue_ts_ns[row]).ravel()
        return stream, np.full(n, EXECUTION_REPORT_SIZE), np.where(filled, EXECUTION_REPORT_SIZE, 0)


def _symbols(instrument: np.ndarray) -> np.ndarray:
    """FIX Symbol of each instrument id: "I" and 7 digits."""
    return np.char.add(b"I", np.char.zfill(instrument.astype("S7"), 7))


EXEC_KINDS = {"0": "A", "1": "F", "2": "F", "4": "X", "8": "R"}   # ExecType -> the gateway's event kind


class FixClient:
    """One FIX session's orders, as the engine's gateway sends them. A primed order's MsgSeqNum
    and SendingTime are fixed when its prefix goes out."""

    order_bytes = NEW_ORDER_SINGLE_SIZE

    def __init__(self, account: int, sender: str, target: str):
        self.account, self.sender, self.target = account, sender, target
        self.seq_num = 1                               # next MsgSeqNum
        self.primed: tuple[int, int] | None = None     # (MsgSeqNum, SendingTime ns) of the primed order

    def _order(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        if self.primed is not None:
            seq_num, sending_time = self.primed
        else:
            seq_num, sending_time = self.seq_num, time.time_ns()
            self.seq_num += 1
        return NewOrderSingle(self.sender, self.target, seq_num, sending_time, self.account, wire_id, md_seq,
                              f"{instrument:08d}", side or 1, qty, price, time.time_ns(), tif).encode()

    def login(self) -> bytes:
        return b""                                     # the session starts with the first order

    def order(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        return self._order(wire_id, md_seq, instrument, side, tif, price, qty)

    def rest(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        """The primed order's bytes after its prefix (its MsgSeqNum and SendingTime were fixed then)."""
        message = self._order(wire_id, md_seq, instrument, side, tif, price, qty)
        self.primed = None
        return message[NEW_ORDER_SINGLE_PREFIX_BYTES:]

    def prefix(self, wire_id: int) -> bytes:
        self.primed = (self.seq_num, time.time_ns())
        self.seq_num += 1
        return self._order(wire_id, 0, 0, 1, IOC, 0, 0)[:NEW_ORDER_SINGLE_PREFIX_BYTES]

    def void(self, wire_id: int) -> bytes:
        """The rest of the primed order with quantity 0, which the venue rejects."""
        rest = self._order(wire_id, 0, 0, 1, IOC, 0, 0)[NEW_ORDER_SINGLE_PREFIX_BYTES:]
        self.primed = None
        return rest

    def cancel(self, wire_id, md_seq, target_wire, instrument, side, qty) -> bytes:
        now = time.time_ns()
        message = OrderCancelRequest(self.sender, self.target, self.seq_num, now, self.account, target_wire,
                                     wire_id, md_seq, f"{instrument:08d}", side or 1, qty, now).encode()
        self.seq_num += 1
        return message

    def replies(self, inbox) -> VenueReplies:
        frames = frame_fix_stream(bytes(inbox))
        events, malformed, unexpected = [], 0, 0
        for offset, length in zip(frames.offset.tolist(), frames.length.tolist()):
            try:
                report = decode_fix(bytes(inbox[offset:offset + length]))
            except ProtocolError:
                malformed += 1
                continue
            if not isinstance(report, ExecutionReport):
                unexpected += 1
                continue
            events.append((EXEC_KINDS[report.exec_type], report.client_order_id, report.order_id, report.side,
                           report.last_price, report.last_qty, report.leaves_qty))
        if frames.error:
            return VenueReplies(events, frames.consumed, malformed + 1, unexpected, True)
        return VenueReplies(events, frames.consumed, malformed, unexpected, False)


class FixServer:
    """One FIX session as the venue reads it: NewOrderSingle and OrderCancelRequest in the
    fixed layouts, answered with ExecutionReports from the CompIDs the client used."""
    _START = b"8=FIX.4.2" + SOH + b"9="
    _LENGTH_DIGITS = 3
    _SIZES = (NEW_ORDER_SINGLE_SIZE, ORDER_CANCEL_REQUEST_SIZE)
    _EXEC_TYPES = {"ack": "0", "cancelled": "4", "reject": "8"}     # a fill is 1 (partial) or 2

    def __init__(self):
        self.seq_num = 1                               # next MsgSeqNum we send
        self.ids = ("VENUE001", "WIRELAB1")            # our CompID, the client's

    def message_size(self, inbox) -> int | None:
        start = bytes(inbox[:len(self._START)])
        if not self._START.startswith(start):
            raise ProtocolError("bytes that do not start a FIX 4.2 message")
        end_of_length = inbox.find(SOH, len(self._START), len(self._START) + self._LENGTH_DIGITS + 1)
        if end_of_length < 0:
            if len(inbox) > len(self._START) + self._LENGTH_DIGITS:
                raise ProtocolError("FIX BodyLength is not 3 digits")
            return None
        digits = bytes(inbox[len(self._START):end_of_length])
        if not digits.isdigit():
            raise ProtocolError(f"FIX BodyLength {digits!r} is not a number")
        size = end_of_length + 1 + int(digits) + len(b"10=000") + 1
        if size not in self._SIZES:
            raise ProtocolError(f"FIX message of {size} bytes is neither a NewOrderSingle nor a cancel")
        return size if len(inbox) >= size else None

    def request(self, message: bytes) -> VenueRequest:
        decoded = decode_fix(message)
        if isinstance(decoded, ExecutionReport):
            raise ProtocolError("an ExecutionReport from the client")
        self.ids = (decoded.target, decoded.sender)
        if isinstance(decoded, OrderCancelRequest):
            return VenueRequest("cancel", decoded.client_order_id, decoded.trigger_seq,
                                orig_client_order_id=decoded.orig_client_order_id)
        return VenueRequest("void" if decoded.qty == 0 else "new", decoded.client_order_id, decoded.trigger_seq,
                            instrument_of(decoded.symbol), decoded.side, decoded.price, decoded.qty,
                            decoded.time_in_force)

    def reply(self, event) -> bytes:
        status = ("1" if event.leaves_qty else "2") if event.kind == "fill" else self._EXEC_TYPES[event.kind]
        sender, target = self.ids
        report = ExecutionReport(
            sender, target, self.seq_num, time.time_ns(), event.venue_order_id, event.client_order_id,
            event.exec_id, status, status, f"{max(event.instrument, 0):08d}", event.side, max(event.order_qty, 0),
            event.qty, event.price if event.kind == "fill" else 0, event.leaves_qty, event.cum_qty,
            event.avg_price, event.venue_ts_ns)
        self.seq_num += 1
        return report.encode()


def instrument_of(symbol: str) -> int:
    """The instrument id in a FIX Symbol: its digits ("00000042" or "I0000042"); -1 if none."""
    digits = symbol.lstrip("I")
    return int(digits) if digits.isdigit() else -1


PROTOCOL = FixOrders()
