"""The protocols by name. Each wire-protocol module (md.py, orders.py, fix.py) declares one
protocol object, PROTOCOL; the registry takes the built-in ones first, in a fixed order, and
any other one given to `register` (a user's, a test's) after them.

Everything outside engine/protocol/ receives a protocol object and calls it: nothing else
compares a protocol's name. A market-data protocol (MdProtocol) is messages in UDP datagrams;
an order protocol (OrderProtocol) is an order-entry stream over TCP, as the engine's gateway,
the venue's gateway, `lab synth` and `lab measure` use it.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np

from engine.protocol.errors import ProtocolError

_ORDERS: dict[str, OrderProtocol] = {}
_MD: dict[str, MdProtocol] = {}
DEFAULT_ORDERS = "binary"        # what a stream that no protocol recognises is framed as
DEFAULT_MD = "wm"
_BUILT_IN = ("engine.protocol.md", "engine.protocol.itch50", "engine.protocol.orders", "engine.protocol.fix",
             "engine.protocol.ouch42")   # each has a PROTOCOL
_loaded = False


class MdMessages(NamedTuple):
    """Market-data messages found in a batch of datagrams, one row each (int64 arrays)."""
    datagram: object              # index of the datagram it came in
    seq: object                   # its sequence number
    problems: dict                # what could not be used, by reason (counts)


class MdProtocol:
    """A market-data protocol: messages in UDP datagrams, each message with its own sequence
    number. A module declares one subclass instance.

    Declared as data: `name`, `title`, `framing` (how messages are found in a datagram),
    `layouts` (the message tables), and `kernel_probe`: for a protocol of one message per
    datagram, the offsets that let the capture kernel (lab/analysis/_kernels.c) read the seq as
    it decodes the packet headers, or None. For the engine: `book_layout`, the offsets its C book
    decoder reads (engine/_book.c), or None if the engine cannot read the feed, and `book_orders`:
    the feed carries orders by reference (an L3 book, engine.book.decode_itch) rather than
    price levels (engine.book.decode_datagram). The methods are what lab measure, lab synth, the
    venue's feed and lab run call.
    """
    name: str = ""
    title: str = ""
    transport = "udp"
    framing = ""
    layouts: tuple = ()
    kernel_probe: tuple | None = None
    book_layout: tuple | None = None
    book_orders = False

    def messages(self, data, offsets, lengths) -> MdMessages:
        """Every message of the datagrams whose payloads are data[offsets:offsets + lengths],
        vectorised. A payload that is not this protocol's has no messages."""
        raise NotImplementedError

    def decode(self, payload):
        """One datagram's messages that change a book, as objects (ProtocolError if malformed)."""
        raise NotImplementedError

    def synth_shape(self, n_updates, n_trades):
        """`lab synth`'s datagrams of n_updates book levels and n_trades trades (arrays): (payload
        bytes, messages) of each, as int64 arrays."""
        raise NotImplementedError

    def synth_payloads(self, cols: dict, index, tick: int):
        """`lab synth`'s market as this protocol's datagrams: `cols` holds, per datagram, venue, seq
        (its first message's), instrument, send_ts_ns, n_updates, n_trades (book levels and trades it
        carries), bid, ask, qty (6 per datagram) and aggressor. The datagrams at `index`, back to
        back: (uint8 array, int64 start of each)."""
        raise NotImplementedError

    def from_l2(self, datagrams: list) -> tuple[list[bytes], list[int], list[int]]:
        """The venue's L2 market (WM datagrams, decoded: engine.protocol.md.MdDatagram, in order) as this
        protocol publishes it: (packets, the seq of each packet's first message, the index of the
        datagram each packet tells). A datagram that changes nothing a protocol tells has no packet."""
        raise NotImplementedError

    def stamp(self, payload: bytearray, seq: int | None = None, send_ts_ns: int | None = None) -> None:
        """Write the datagram's seq (its first message's) and the sender's clock into `payload`."""
        raise NotImplementedError


class OrderProtocol:
    """An order-entry protocol over a TCP byte stream. A module declares one subclass instance.

    Declared as data: `name`, `title`, `layouts` (the message tables), `sniff_bytes` (how much of
    a stream's start `sniff` needs) and `prefix_bytes` (a new order's decision-free prefix, which
    tcp-prefix sends early). The methods are what lab measure, lab synth and the two gateways call.
    """
    name: str = ""
    title: str = ""
    transport = "tcp"
    framing = ""                  # one line: how messages are found in the stream
    sniff_bytes = 0
    prefix_bytes = 0
    layouts: tuple = ()           # objects with .name and .table() (markdown)

    # -- lab measure ---------------------------------------------------------------------------
    def sniff(self, head: bytes) -> bool:
        """Does a stream starting with `head` (sniff_bytes of it, or all there is) look like this?"""
        raise NotImplementedError

    def frame(self, stream):
        """Cut a reassembled stream into messages: an engine.protocol.stream.StreamFrames."""
        raise NotImplementedError

    carries_trigger = True        # do new orders hold their trigger's MD seq? (OUCH's do not)

    def problems(self, stream, frames) -> dict[str, int]:
        """What in the framed stream could not be used, by reason (none by default)."""
        return {}

    def order_ids(self, stream, frames, rows):
        """The client order id of each new order at frame rows `rows` (int64, -1 unknown): the key
        a telemetry file links to a trigger when the order carries none."""
        return np.full(len(rows), -1, np.int64)

    def new_orders(self, stream, frames, trigger_tag: int | None = None):
        """(frame indices of new orders, their quantities, their trigger MD seqs, -1 if none) as
        int64 arrays. `trigger_tag` names another field holding the trigger, where the protocol
        has such fields (FIX tags)."""
        raise NotImplementedError

    # -- the engine's gateway --------------------------------------------------------------------
    def client(self, account: int, sender: str, target: str):
        """One session's order entry, as the engine sends it: an object with `order_bytes` (a new
        order's size), login() -> what to send first on a new connection (b"" for none),
        order(wire_id, md_seq, instrument, side, tif, price, qty) -> the whole new order, rest(the
        same) -> its bytes after a primed prefix, prefix(wire_id), void(wire_id),
        cancel(wire_id, md_seq, target_wire, instrument, side, qty), and replies(inbox) -> VenueReplies."""
        raise NotImplementedError

    # -- the venue's gateway -------------------------------------------------------------------
    def server(self):
        """One connection's order entry, as the venue reads it: an object with
        message_size(inbox) -> bytes of the message at its start, None if not all there yet
        (ProtocolError if it cannot be a client's message), request(message) -> VenueRequest
        (ProtocolError if malformed), and reply(event) -> bytes for a matching-engine event
        (kind ack, cancelled, fill or reject; request new or cancel; ids, side, price, qty,
        leaves_qty, cum_qty, avg_price, order_qty, instrument, reason, venue_ts_ns)."""
        raise NotImplementedError

    # -- lab synth ---------------------------------------------------------------------------
    new_order_bytes = 0           # the size of every new order lab synth writes

    def synth_orders(self, order: dict, decided_ns, first_bit_ns):
        """New orders, back to back, as one uint8 array. `order` holds a column (or one value)
        per field: account, client_order_id, trigger_seq, instrument, side, price, qty."""
        raise NotImplementedError

    def synth_session(self) -> tuple[bytes, bytes, bytes, bytes]:
        """What a session says around its orders, for lab synth: the client's opening bytes (a
        login), the venue's answer, the client's closing bytes and the venue's. Empty by default."""
        return b"", b"", b"", b""

    def synth_replies(self, order: dict, rejected, filled, venue_ts_ns):
        """The venue's answer to each order, back to back: a reject, an ack, or an ack then a fill
        (`order` adds venue_order_id and exec_id). Returns (uint8 stream, bytes of each order's
        first reply, bytes of its fill or 0)."""
        raise NotImplementedError


class VenueRequest(NamedTuple):
    """A client's message as the venue's matching engine takes it."""
    kind: str                         # new, cancel, void (a new order of quantity 0); session (a login, a
    #                                   heartbeat) or rejected (malformed, the stream still framed): for the
    #                                   gateway alone, answered with `answer`
    client_order_id: int
    trigger_seq: int
    instrument: int = 0
    side: int = 0
    price: int = 0
    qty: int = 0
    time_in_force: int = 0
    orig_client_order_id: int = 0     # a cancel's target
    answer: bytes = b""               # what the venue sends back at once to a session message


class VenueReplies(NamedTuple):
    """What the venue's bytes in a session's inbox said, for the engine's gateway."""
    events: list          # (kind, wire id, venue order id, side, price, qty, leaves qty); kind is
    #                       A accepted, F fill, X cancelled or expired, R rejected
    consumed: int         # inbox bytes used up
    malformed: int        # messages that could not be decoded
    unexpected: int       # well-formed messages a venue does not send
    broken: bool          # the stream cannot be read on: disconnect


def register(protocol):
    """Add an MdProtocol or an OrderProtocol under its name, after the built-in ones; returns it."""
    _load()
    return _add(protocol)


def _add(protocol):
    table = _MD if isinstance(protocol, MdProtocol) else _ORDERS
    if not protocol.name or protocol.name in _MD or protocol.name in _ORDERS:
        raise ValueError(f"protocol name {protocol.name!r} is empty or taken")
    table[protocol.name] = protocol
    return protocol


def unregister(name: str) -> None:
    """Remove a protocol (tests that register a toy one)."""
    _ORDERS.pop(name, None)
    _MD.pop(name, None)


def _load() -> None:
    """Register the built-in protocols (each module's PROTOCOL), in _BUILT_IN's order."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILT_IN:
            _add(importlib.import_module(module).PROTOCOL)


def _orders() -> dict[str, OrderProtocol]:
    _load()
    return _ORDERS


def _lookup(table: dict, name: str, what: str):
    _load()
    try:
        return table[name]
    except KeyError:
        raise ProtocolError(f"unknown {what} protocol {name!r}: use one of {', '.join(table)}") from None


def md_protocol(name: str) -> MdProtocol:
    return _lookup(_MD, name, "market-data")


def md_protocols() -> list[MdProtocol]:
    _load()
    return list(_MD.values())


def md_protocol_names() -> tuple[str, ...]:
    _load()
    return tuple(_MD)


def protocols() -> list:
    """Every registered protocol: market data first, then order entry."""
    _load()
    return [*_MD.values(), *_ORDERS.values()]


def order_protocol(name: str) -> OrderProtocol:
    return _lookup(_ORDERS, name, "order")


def order_protocol_names() -> tuple[str, ...]:
    return tuple(_orders())


def sniff_bytes() -> int:
    """Bytes of a stream's start that tell every registered order protocol apart."""
    return max(p.sniff_bytes for p in _orders().values())


def sniff_orders(head: bytes) -> OrderProtocol:
    """The first registered protocol that recognises `head`, else the default."""
    return next((p for p in _orders().values() if p.sniff(head)), _ORDERS[DEFAULT_ORDERS])
