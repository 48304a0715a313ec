"""NASDAQ OUCH 4.2 orders in SoupBinTCP 3.0 packets over TCP (`ouch42`).

SoupBinTCP 3.0, section 2 "SoupBinTCP Packets": every packet is Packet Length (u16, big-endian,
the bytes after it) and Packet Type (1 alpha), then its payload. From the client: Login Request
L (username 6, password 10, requested session 10, requested sequence number 20, alpha), Unsequenced
Data U (one OUCH message), Client Heartbeat R, Logout Request O. From the server: Login Accepted A
(session 10, sequence number 20), Login Rejected J (reason 1), Sequenced Data S (one OUCH message),
Server Heartbeat H, End of Session Z, Debug +.

OUCH 4.2, section 2 "Inbound Messages" (in U packets): Enter Order O (49 bytes), Replace Order U
(47), Cancel Order X (19); section 3 "Outbound Messages" (in S packets): System Event S, Accepted A,
Replaced U, Canceled C, Executed E, Rejected J. Integers are big-endian; Price(4) has 4 implied
decimals; outbound Timestamps are ns since midnight (u64).

OUCH carries no market-data reference: an order's link to its trigger is its Order Token, which
the sender assigns before deciding. The lab's own tokens are the client order id in 14 digits, so
a telemetry file (engine token -> trigger seq) links them; without one, `lab measure` matches the
nearest market data. tcp-prefix sends the 18 decision-free bytes early: the Soup length and type,
the OUCH type and the token.
"""
from __future__ import annotations

import time

import numpy as np

from engine.messages import BUY, DAY, IOC, SELL
from engine.protocol.errors import ProtocolError
from engine.protocol.layout import Field, Layout, as_bytes_array, gather
from engine.protocol.registry import OrderProtocol, VenueReplies, VenueRequest
from engine import _native
from engine.protocol.stream import StreamFrames

PRICE_SCALE = 10**4                  # Price(4) -> the lab's ticks of 1e-8
TOKEN_DIGITS = 14
SOUP_HEADER = 3                      # Packet Length u16 + Packet Type
CLIENT_PACKETS = b"LURO"
SERVER_PACKETS = b"AJSHZ+"
MAX_PACKET = 0xFFFF - 1              # the longest packet the stream may carry; 0 and 65535 are refused
SIDES = {BUY: b"B", SELL: b"S"}
TIF_IOC, TIF_DAY = 0, 99998          # OUCH Time In Force: 0 immediate, 99998 market hours

SOUP = Layout("SoupBinTCP packet header", 3, [
    Field("packet_length", 0, ">u2", "bytes after this field"),
    Field("packet_type", 2, "S1", "L U R O from the client; A J S H Z + from the server"),
])
LOGIN_REQUEST = Layout("Login Request (L)", 46, [
    Field("username", 0, "S6", "alpha, space padded"), Field("password", 6, "S10", "alpha, space padded"),
    Field("requested_session", 16, "S10", "blank: the current one"),
    Field("requested_sequence", 26, "S20", "numeric ASCII, right-justified; 0: the latest")])
LOGIN_ACCEPTED = Layout("Login Accepted (A)", 30, [
    Field("session", 0, "S10", "the session"), Field("sequence", 10, "S20", "next sequence number, ASCII")])
ENTER_ORDER = Layout("Enter Order (O)", 49, [
    Field("message_type", 0, "S1", 'b"O"'), Field("order_token", 1, "S14", "the client's id for the order"),
    Field("side", 15, "S1", "B buy, S sell, T short, E short exempt"), Field("shares", 16, ">u4", "shares"),
    Field("stock", 20, "S8", "symbol, space padded"), Field("price", 28, ">u4", "Price(4)"),
    Field("time_in_force", 32, ">u4", "0 immediate, 99998 market hours, 99999 system hours"),
    Field("firm", 36, "S4", "firm"), Field("display", 40, "S1", "Y visible"),
    Field("capacity", 41, "S1", "A agency, P principal"), Field("intermarket_sweep", 42, "S1", "Y N"),
    Field("minimum_quantity", 43, ">u4", "shares"), Field("cross_type", 47, "S1", "N no cross"),
    Field("customer_type", 48, "S1", "R retail, N not")])
CANCEL_ORDER = Layout("Cancel Order (X)", 19, [
    Field("message_type", 0, "S1", 'b"X"'), Field("order_token", 1, "S14", "the order to cancel"),
    Field("shares", 15, ">u4", "shares to leave: 0 cancels the order")])
REPLACE_ORDER = Layout("Replace Order (U)", 47, [
    Field("message_type", 0, "S1", 'b"U"'), Field("existing_token", 1, "S14", "the order replaced"),
    Field("replacement_token", 15, "S14", "its new token"), Field("shares", 29, ">u4", "shares"),
    Field("price", 33, ">u4", "Price(4)"), Field("time_in_force", 37, ">u4", "seconds, or 0 / 99998 / 99999"),
    Field("display", 41, "S1", "Y visible"), Field("intermarket_sweep", 42, "S1", "Y N"),
    Field("minimum_quantity", 43, ">u4", "shares")])
ACCEPTED = Layout("Accepted (A)", 66, [
    Field("message_type", 0, "S1", 'b"A"'), Field("timestamp", 1, ">u8", "ns since midnight"),
    Field("order_token", 9, "S14", "the client's token"), Field("side", 23, "S1", "B S T E"),
    Field("shares", 24, ">u4", "shares"), Field("stock", 28, "S8", "symbol"), Field("price", 36, ">u4", "Price(4)"),
    Field("time_in_force", 40, ">u4", "as entered"), Field("firm", 44, "S4", "firm"),
    Field("display", 48, "S1", "Y"), Field("order_reference", 49, ">u8", "the venue's id for the order"),
    Field("capacity", 57, "S1", "A P"), Field("intermarket_sweep", 58, "S1", "Y N"),
    Field("minimum_quantity", 59, ">u4", "shares"), Field("cross_type", 63, "S1", "N"),
    Field("order_state", 64, "S1", "L live, D dead"), Field("bbo_weight", 65, "S1", "0 1 2 3 or space")])
CANCELED = Layout("Canceled (C)", 28, [
    Field("message_type", 0, "S1", 'b"C"'), Field("timestamp", 1, ">u8", "ns since midnight"),
    Field("order_token", 9, "S14", "the order"), Field("decrement_shares", 23, ">u4", "shares cancelled"),
    Field("reason", 27, "S1", "U user, I immediate or cancel, T timeout, ...")])
EXECUTED = Layout("Executed (E)", 40, [
    Field("message_type", 0, "S1", 'b"E"'), Field("timestamp", 1, ">u8", "ns since midnight"),
    Field("order_token", 9, "S14", "the order"), Field("executed_shares", 23, ">u4", "shares"),
    Field("execution_price", 27, ">u4", "Price(4)"), Field("liquidity_flag", 31, "S1", "A added, R removed"),
    Field("match_number", 32, ">u8", "the match")])
REJECTED = Layout("Rejected (J)", 24, [
    Field("message_type", 0, "S1", 'b"J"'), Field("timestamp", 1, ">u8", "ns since midnight"),
    Field("order_token", 9, "S14", "the order"), Field("reason", 23, "S1", "T test mode, H halted, Z shares, ...")])
INBOUND = {ord("O"): ENTER_ORDER, ord("X"): CANCEL_ORDER, ord("U"): REPLACE_ORDER}
OUTBOUND = {ord("A"): ACCEPTED, ord("C"): CANCELED, ord("E"): EXECUTED, ord("J"): REJECTED}
# What a session's first packet may be: its type -> its Packet Length (what follows the length field).
_SNIFF_LENGTHS = {ord("L"): {1 + LOGIN_REQUEST.size}, ord("A"): {1 + LOGIN_ACCEPTED.size}, ord("J"): {2},
                  ord("R"): {1}, ord("H"): {1}, ord("Z"): {1},
                  ord("U"): {1 + layout.size for layout in INBOUND.values()}, ord("S"): range(2, 256)}
ENTER_ORDER_PACKET = SOUP_HEADER + ENTER_ORDER.size        # 52: the whole Unsequenced Data packet
PREFIX_BYTES = SOUP_HEADER + ENTER_ORDER.offset("side")    # 18: Soup header, type and token
NS_PER_DAY = 86_400 * 10**9


def token(client_order_id: int) -> bytes:
    """The lab's Order Token for a client order id: 14 digits."""
    if not 0 <= client_order_id < 10**TOKEN_DIGITS:
        raise ProtocolError(f"client order id {client_order_id} does not fit a {TOKEN_DIGITS}-digit token")
    return b"%014d" % client_order_id


def token_id(text: bytes) -> int:
    """The client order id in a token of digits (the lab's); -1 for any other token."""
    text = bytes(text).strip()
    return int(text) if text.isdigit() else -1


def soup(packet_type: bytes, payload: bytes = b"") -> bytes:
    return SOUP.struct.pack(len(payload) + 1, packet_type) + payload


def _symbol(instrument: int) -> bytes:
    return b"I%07d" % instrument


def _instrument(stock: bytes) -> int:
    digits = bytes(stock).strip().lstrip(b"I")
    return int(digits) if digits.isdigit() else -1


def _since_midnight(now_ns: int) -> int:
    return now_ns % NS_PER_DAY


def frame_soup_stream(stream, packet_types: bytes, start: int = 0) -> StreamFrames:
    """Cut a TCP byte stream into SoupBinTCP packets (walked in C: engine._native.walk_soup), each
    a length of 1 to MAX_PACKET and a type among `packet_types`. `msg_type` holds each packet's
    type. An incomplete last packet is left in `tail_bytes`; a bad header stops framing with
    `error`."""
    data = np.ascontiguousarray(as_bytes_array(stream))
    size = data.size
    is_type = np.zeros(256, np.uint8)
    is_type[np.frombuffer(packet_types, np.uint8)] = 1
    room = max(size - start, 0) // SOUP_HEADER + 1
    offset, length = np.empty(room, np.int64), np.empty(room, np.int64)
    written, consumed, incomplete = _native.walk_soup(data, start, is_type, MAX_PACKET, offset, length)
    offset, length = offset[:written], length[:written]
    error = None
    if not incomplete and size - consumed >= SOUP_HEADER:
        bad_length = data[consumed].astype(np.int64) << 8 | data[consumed + 1]
        error = (f"SoupBinTCP packet of length {bad_length}" if not 1 <= bad_length <= MAX_PACKET
                 else f"unknown SoupBinTCP packet type {bytes(data[consumed + 2:consumed + 3])!r}")
    return StreamFrames(offset=offset, length=length, msg_type=data[offset + 2], consumed=consumed,
                        stream_bytes=size, error=error, error_offset=consumed if error else None)


class Ouch42Orders(OrderProtocol):
    name = "ouch42"
    title = "NASDAQ OUCH 4.2 in SoupBinTCP 3.0"
    framing = ("SoupBinTCP packets: a u16 big-endian length and a type; OUCH messages ride in U (from the "
               "client) and S (from the venue) packets")
    sniff_bytes = SOUP_HEADER
    prefix_bytes = PREFIX_BYTES
    new_order_bytes = ENTER_ORDER_PACKET
    layouts = (SOUP, LOGIN_REQUEST, LOGIN_ACCEPTED, ENTER_ORDER, CANCEL_ORDER, REPLACE_ORDER, ACCEPTED, CANCELED,
               EXECUTED, REJECTED)

    def sniff(self, head: bytes) -> bool:
        """A stream that opens with a SoupBinTCP packet of a plausible length for its type."""
        if len(head) < SOUP_HEADER:
            return False
        length = head[0] << 8 | head[1]
        return length in _SNIFF_LENGTHS.get(head[2], ())

    def frame(self, stream) -> StreamFrames:
        return frame_soup_stream(stream, CLIENT_PACKETS + SERVER_PACKETS)

    carries_trigger = False

    def problems(self, stream, frames) -> dict[str, int]:
        data = as_bytes_array(stream)
        unsequenced = np.flatnonzero(frames.msg_type == ord("U"))
        whole = frames.length[unsequenced] > SOUP_HEADER
        kind = np.zeros(unsequenced.size, np.int64)
        kind[whole] = data[frames.offset[unsequenced[whole]] + SOUP_HEADER]
        expected = np.zeros(256, np.int64)
        for letter, layout in INBOUND.items():
            expected[letter] = SOUP_HEADER + layout.size
        return {"orders_cut_mid_field": int(np.count_nonzero((kind == ord("O")) & (frames.length[unsequenced]
                                                                                  != ENTER_ORDER_PACKET))),
                "unknown_ouch_types": int(np.count_nonzero(whole & (expected[kind] == 0)))}

    def new_orders(self, stream, frames, trigger_tag=None):
        data = as_bytes_array(stream)
        enter = np.flatnonzero((frames.msg_type == ord("U")) & (frames.length == ENTER_ORDER_PACKET))
        enter = enter[data[frames.offset[enter] + SOUP_HEADER] == ord("O")]
        records = gather(data, frames.offset[enter] + SOUP_HEADER, ENTER_ORDER.dtype)
        return enter, records["shares"].astype(np.int64), np.full(enter.size, -1, np.int64)

    def order_ids(self, stream, frames, rows) -> np.ndarray:
        """The client order id in each new order's token (-1 if it is not the lab's 14 digits)."""
        at = frames.offset[rows] + SOUP_HEADER + ENTER_ORDER.offset("order_token")
        digits = gather(as_bytes_array(stream), at, np.dtype((np.void, TOKEN_DIGITS))).view(np.uint8)
        digits = digits.reshape(-1, TOKEN_DIGITS).astype(np.int64) - ord("0")
        value = digits @ (10 ** np.arange(TOKEN_DIGITS - 1, -1, -1, dtype=np.int64))
        return np.where(((digits >= 0) & (digits <= 9)).all(axis=1), value, -1)

    # -- lab synth -------------------------------------------------------------------------------
    def synth_orders(self, order: dict, decided_ns, first_bit_ns):
        n = len(decided_ns)
        packets = np.zeros(n, np.dtype([("soup", SOUP.dtype), ("order", ENTER_ORDER.dtype)]))
        packets["soup"]["packet_length"], packets["soup"]["packet_type"] = 1 + ENTER_ORDER.size, b"U"
        o = packets["order"]
        o["message_type"], o["stock"] = b"O", _symbols(order["instrument"])
        o["order_token"] = np.char.zfill(np.asarray(order["client_order_id"]).astype(f"S{TOKEN_DIGITS}"), TOKEN_DIGITS)
        o["side"] = np.where(order["side"] == BUY, b"B", b"S")
        o["shares"], o["price"] = order["qty"], order["price"] // PRICE_SCALE
        o["time_in_force"], o["firm"], o["display"], o["capacity"] = TIF_IOC, b"WLAB", b"Y", b"P"
        o["intermarket_sweep"], o["cross_type"], o["customer_type"] = b"N", b"N", b"N"
        return packets.view(np.uint8)

    def synth_session(self) -> tuple[bytes, bytes, bytes, bytes]:
        login = soup(b"L", b"WLAB01" + b"wirelab".ljust(10) + b" " * 10 + b"1".rjust(20))
        return (login, soup(b"A", b"WIRELAB001" + b"1".rjust(20)), soup(b"R") + soup(b"O"), soup(b"H") + soup(b"Z"))

    def synth_replies(self, order: dict, rejected, filled, venue_ts_ns):
        n = rejected.size
        tokens = np.char.zfill(np.asarray(order["client_order_id"]).astype(f"S{TOKEN_DIGITS}"), TOKEN_DIGITS)
        stamp = np.asarray(venue_ts_ns, np.int64) % NS_PER_DAY
        first = np.zeros(n, np.dtype([("soup", SOUP.dtype), ("message", ACCEPTED.dtype)]))
        first["soup"]["packet_type"] = b"S"
        first["soup"]["packet_length"] = np.where(rejected, 1 + REJECTED.size, 1 + ACCEPTED.size)
        accepted = first["message"]
        accepted["message_type"], accepted["timestamp"], accepted["order_token"] = b"A", stamp, tokens
        accepted["side"] = np.where(order["side"] == BUY, b"B", b"S")
        accepted["shares"], accepted["stock"] = order["qty"], _symbols(order["instrument"])
        accepted["price"], accepted["firm"], accepted["display"] = order["price"] // PRICE_SCALE, b"WLAB", b"Y"
        accepted["order_reference"], accepted["capacity"] = order["venue_order_id"], b"P"
        accepted["intermarket_sweep"], accepted["cross_type"], accepted["order_state"] = b"N", b"N", b"L"
        accepted["bbo_weight"] = b" "
        raw = first.view(np.uint8).reshape(n, -1).copy()
        reject = np.zeros(int(rejected.sum()), np.dtype([("soup", SOUP.dtype), ("message", REJECTED.dtype)]))
        reject["soup"]["packet_length"], reject["soup"]["packet_type"] = 1 + REJECTED.size, b"S"
        reject["message"]["message_type"], reject["message"]["timestamp"] = b"J", stamp[rejected]
        reject["message"]["order_token"], reject["message"]["reason"] = tokens[rejected], b"Z"
        raw[rejected, :reject.dtype.itemsize] = reject.view(np.uint8).reshape(-1, reject.dtype.itemsize)
        first_len = np.where(rejected, reject.dtype.itemsize, first.dtype.itemsize)
        fills = np.zeros(n, np.dtype([("soup", SOUP.dtype), ("message", EXECUTED.dtype)]))
        fills["soup"]["packet_length"], fills["soup"]["packet_type"] = 1 + EXECUTED.size, b"S"
        e = fills["message"]
        e["message_type"], e["timestamp"], e["order_token"] = b"E", stamp, tokens
        e["executed_shares"], e["execution_price"] = order["qty"], order["price"] // PRICE_SCALE
        e["liquidity_flag"], e["match_number"] = b"R", order["exec_id"]
        fill_len = np.where(filled, fills.dtype.itemsize, 0)
        pieces = np.concatenate([raw, fills.view(np.uint8).reshape(n, -1)], axis=1)
        keep = np.concatenate([np.arange(raw.shape[1]) < first_len[:, None],
                               np.arange(fills.dtype.itemsize) < fill_len[:, None]], axis=1)
        return pieces[keep], first_len, fill_len

    # -- the engine's gateway and the venue's ------------------------------------------------------
    def client(self, account: int, sender: str, target: str) -> Ouch42Client:
        return Ouch42Client(account, sender)

    def server(self) -> Ouch42Server:
        return Ouch42Server()


def _symbols(instrument) -> np.ndarray:
    return np.char.add(b"I", np.char.zfill(np.asarray(instrument).astype("S7"), 7))


class Ouch42Client:
    """One OUCH session as the engine's gateway runs it: a login first, orders as Unsequenced
    Data, the venue's Sequenced Data read back."""
    order_bytes = ENTER_ORDER_PACKET
    _enter = ENTER_ORDER.struct.pack

    def __init__(self, account: int, username: str):
        self.account = account
        self.username = username.encode()[:6].ljust(6)
        self.open: dict[int, int] = {}                 # wire id -> shares not yet executed (OUCH's E omits them)
        self.cancels: dict[int, int] = {}              # wire id of an order -> of the cancel request for it

    def login(self) -> bytes:
        return soup(b"L", self.username + b"wirelab".ljust(10) + b" " * 10 + b"0".rjust(20))

    def order(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        self.open[wire_id] = qty
        return soup(b"U", self._enter(b"O", token(wire_id), SIDES.get(side, b"B"), qty, _symbol(instrument),
                                      price // PRICE_SCALE, TIF_IOC if tif == IOC else TIF_DAY, b"WLAB", b"Y", b"P",
                                      b"N", 0, b"N", b"N"))

    def rest(self, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        return self.order(wire_id, md_seq, instrument, side, tif, price, qty)[PREFIX_BYTES:]

    def prefix(self, wire_id: int) -> bytes:
        return self.order(wire_id, 0, 0, BUY, IOC, 0, 0)[:PREFIX_BYTES]

    def void(self, wire_id: int) -> bytes:
        """The rest of the primed order with 0 shares: the venue rejects it."""
        return self.rest(wire_id, 0, 0, BUY, IOC, 0, 0)

    def cancel(self, wire_id, md_seq, target_wire, instrument, side, qty) -> bytes:
        """OUCH cancels by the order's token; the venue's answer comes back as the cancel request's."""
        self.cancels[target_wire] = wire_id
        return soup(b"U", CANCEL_ORDER.struct.pack(b"X", token(target_wire), 0))

    def replies(self, inbox) -> VenueReplies:
        frames = frame_soup_stream(bytes(inbox), SERVER_PACKETS)
        events, malformed, unexpected = [], 0, 0
        for offset, length, kind in zip(frames.offset.tolist(), frames.length.tolist(), frames.msg_type.tolist()):
            if kind != ord("S"):
                continue                                   # login accepted, heartbeats, debug
            message = bytes(inbox[offset + SOUP_HEADER:offset + length])
            layout = OUTBOUND.get(message[0]) if message else None
            if layout is None or len(message) != layout.size:
                unexpected += layout is None
                malformed += layout is not None
                continue
            m = gather(message, [0], layout.dtype)[0]
            wire_id = token_id(m["order_token"])
            if message[:1] == b"A":
                events.append(("A", wire_id, int(m["order_reference"]), 0, 0, 0, 0))
            elif message[:1] == b"E":
                leaves = max(self.open.get(wire_id, 0) - int(m["executed_shares"]), 0)
                self.open[wire_id] = leaves
                events.append(("F", wire_id, 0, 0, int(m["execution_price"]) * PRICE_SCALE,
                               int(m["executed_shares"]), leaves))
            else:                                          # C canceled, J rejected: the order is gone
                self.open.pop(wire_id, None)
                cancel = self.cancels.pop(wire_id, None) if message[:1] == b"C" else None
                events.append(("X" if message[:1] == b"C" else "R", wire_id if cancel is None else cancel,
                               0, 0, 0, 0, 0))
        if frames.error:
            return VenueReplies(events, frames.consumed, malformed + 1, unexpected, True)
        return VenueReplies(events, frames.consumed, malformed, unexpected, False)


class Ouch42Server:
    """One OUCH session as the venue reads it: a login answered at once, orders and cancels for
    the matching engine, Sequenced Data back."""

    def __init__(self):
        self.tokens: dict[int, bytes] = {}             # client order id -> token, for the replies

    def message_size(self, inbox) -> int | None:
        if len(inbox) < 2:
            return None
        length = inbox[0] << 8 | inbox[1]
        if not 1 <= length <= MAX_PACKET:
            raise ProtocolError(f"SoupBinTCP packet of length {length}")
        if len(inbox) >= SOUP_HEADER and inbox[2] not in CLIENT_PACKETS:
            raise ProtocolError(f"unknown SoupBinTCP packet type {bytes(inbox[2:3])!r}")
        return 2 + length if len(inbox) >= 2 + length else None

    def request(self, message: bytes) -> VenueRequest:
        kind, payload = message[2:3], message[SOUP_HEADER:]
        if kind == b"L":
            if len(payload) != LOGIN_REQUEST.size:
                raise ProtocolError(f"Login Request of {len(payload)} bytes, not {LOGIN_REQUEST.size}")
            return VenueRequest("session", 0, 0, answer=soup(b"A", b"WIRELAB001" + b"1".rjust(20)))
        if kind in (b"R", b"O"):                       # heartbeat, logout: nothing for the matching engine
            return VenueRequest("session", 0, 0)
        layout = INBOUND.get(payload[0]) if payload else None
        if layout is None or len(payload) != layout.size:     # the Soup framing holds: answer, go on
            named = payload[1:1 + TOKEN_DIGITS] if len(payload) > TOKEN_DIGITS else None
            answer = soup(b"S", REJECTED.struct.pack(b"J", _since_midnight(time.time_ns()), named, b"Z")) \
                if named and layout is not None else b""
            return VenueRequest("rejected", token_id(named) if named else 0, 0, answer=answer)
        m = gather(payload, [0], layout.dtype)[0]
        if payload[:1] == b"X":
            target = token_id(m["order_token"])
            return VenueRequest("cancel", target, 0, orig_client_order_id=target)
        if payload[:1] == b"U":                        # Replace Order: the lab's venue does not replace
            return VenueRequest("rejected", token_id(m["existing_token"]), 0, answer=soup(b"S", REJECTED.struct.pack(
                b"J", _since_midnight(time.time_ns()), bytes(m["existing_token"]), b"Z")))
        client_id = token_id(m["order_token"])
        if client_id < 0:
            raise ProtocolError(f"order token {bytes(m['order_token'])!r} is not the lab's digits")
        side = {b"B": BUY, b"S": SELL}.get(bytes(m["side"]), 0)
        tif = IOC if int(m["time_in_force"]) == TIF_IOC else DAY
        return VenueRequest("void" if m["shares"] == 0 else "new", client_id, 0, _instrument(m["stock"]), side,
                            int(m["price"]) * PRICE_SCALE, int(m["shares"]), tif)

    def reply(self, event) -> bytes:
        now = _since_midnight(time.time_ns())
        order_token = token(event.client_order_id)
        if event.kind == "ack":
            message = ACCEPTED.struct.pack(
                b"A", now, order_token, SIDES.get(event.side, b"B"), max(event.order_qty, 0),
                _symbol(max(event.instrument, 0)), event.price // PRICE_SCALE if event.price > 0 else 0, TIF_IOC,
                b"WLAB", b"Y", event.venue_order_id, b"P", b"N", 0, b"N", b"L", b" ")
        elif event.kind == "fill":
            message = EXECUTED.struct.pack(b"E", now, order_token, event.qty, event.price // PRICE_SCALE, b"R",
                                           event.exec_id)
        elif event.kind == "cancelled":
            message = CANCELED.struct.pack(b"C", now, order_token, max(event.order_qty, 0), b"U")
        else:
            message = REJECTED.struct.pack(b"J", now, order_token, b"Z")
        return soup(b"S", message)


PROTOCOL = Ouch42Orders()
