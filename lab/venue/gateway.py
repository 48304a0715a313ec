"""The venue's order gateway: a TCP server on loopback in front of the matching engine.

One engine connection at a time (another one is accepted and closed at once;
a reconnect after a disconnect works). Order entry is any registered order
protocol (engine.protocol.registry): its server frames, decodes and answers.

Every recvmsg() comes with the kernel's software RX stamp of the last segment
it read. A message's `last_byte_rx_ns` is the stamp of the read that delivered
its last byte (its arbiter time), `first_byte_rx_ns` that of the read that
delivered its first byte, and `segments` how many reads it spanned. A stamp
the kernel did not give is recorded as 0 (and `unstamped_reads` counts it);
the gateway's rules then use its own clock at the read.

- A NewOrder with qty 0 is a *void*: the engine completes a primed prefix that
  way when it must cancel instead. It gets no reply and is recorded as "void".
- Partial messages: a message whose first byte came more than
  `partial_timeout_ns` before its last byte is either dropped with the
  connection (`timeout`) or handled as if it arrived `partial_penalty_ns` after
  its completion (`penalise`, the default, with no penalty: the engine's primed
  prefix may legitimately wait until the next trigger).
- A message the protocol cannot frame or decode closes the connection
  (`malformed`): a byte stream cannot be re-synchronised.
- A client that leaves (end of stream, or a reset: `resets`) with part of a message
  sent and not the rest is counted (`disconnects_mid_message`); the part is dropped.
- Fills of resting orders caused by the venue's feed (`matching.on_feed`, by
  whoever calls it) are sent to the connection: the gateway is the matching
  engine's `listener`.
- Replies never wait for the client: what the kernel does not take waits in the
  connection's output buffer, flushed when the socket is writable. A client whose
  buffer grows past `max_output_bytes` (it does not read) is disconnected
  (`slow_consumer_disconnects`).
- On disconnect every resting order is cancelled (cancel on disconnect).
"""
from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from engine.net import enable_rx_stamps, recv_stamped
from engine.protocol.errors import ProtocolError
from engine.protocol.registry import DEFAULT_ORDERS, order_protocol
from lab.venue.matching import Event, MatchingEngine, VenueError

PARTIAL_RULES = ("timeout", "penalise")
RECV_BYTES = 1 << 16
MAX_OUTPUT_BYTES = 4 << 20          # replies waiting for a client that does not read, before it is dropped

RECORD_DTYPE = np.dtype([
    ("venue", "<u2"), ("kind", "S6"),                      # new, cancel, void
    ("client_order_id", "<u8"), ("trigger_seq", "<u8"),
    ("first_byte_rx_ns", "<i8"), ("last_byte_rx_ns", "<i8"), ("segments", "<i4"),
    ("message_bytes", "<i4"), ("stream_offset", "<i8"), ("connection", "<i4"),
    ("handled_ns", "<i8"),                                 # the time the matching engine was given
    ("penalised", "?"),
    ("outcome", "S9"),                                     # acked, rejected, cancelled, void
    ("filled_qty", "<i8"), ("reject_reason", "<u4"),
])


class Read(NamedTuple):
    """One recvmsg() of the engine's connection: what it brought, from where in the stream."""
    peer_port: int                    # the engine's end of the connection
    rx_ns: int                        # its kernel RX stamp (0: none)
    stream_offset: int                # offset of data[0] in the connection's byte stream
    data: bytes


class _Arrival(NamedTuple):           # RECORD_DTYPE's fields from first_byte_rx_ns to penalised
    first_byte_rx_ns: int
    last_byte_rx_ns: int
    segments: int
    message_bytes: int
    stream_offset: int
    connection: int
    handled_ns: int
    penalised: bool


@dataclass
class _Connection:
    sock: socket.socket
    number: int
    peer_port: int = 0
    inbox: bytearray = field(default_factory=bytearray)
    stream_offset: int = 0            # stream offset of inbox[0]
    first_rx_ns: int = 0              # kernel stamp of the read that brought inbox[0] (0: none)
    first_seen_ns: int = 0            # the same, or the gateway's clock at that read
    segments: int = 0                 # reads that brought the message at the head of inbox
    outbox: bytearray = field(default_factory=bytearray)   # replies the kernel has not taken yet
    server: object = None             # the protocol's framer, decoder and encoder for this connection


class OrderGateway:
    def __init__(self, venue: int, matching: MatchingEngine, protocol: str = DEFAULT_ORDERS, host: str = "127.0.0.1",
                 port: int = 0, partial_timeout_ns: int = 1_000_000_000, partial_rule: str = "penalise",
                 partial_penalty_ns: int = 0, keep_reads: bool = False, max_output_bytes: int = MAX_OUTPUT_BYTES):
        """keep_reads: keep every read's bytes (`reads`), for a capture rebuilt from the sockets' stamps.

        max_output_bytes: the most replies a connection may leave unread before it is disconnected.
        """
        try:
            self.order_protocol = order_protocol(protocol)
        except ProtocolError as exc:
            raise VenueError(str(exc)) from None
        if partial_rule not in PARTIAL_RULES:
            raise VenueError(f"partial-message rule must be one of {PARTIAL_RULES}, got {partial_rule!r}")
        if max_output_bytes < 1:
            raise VenueError(f"max_output_bytes must be at least 1, got {max_output_bytes}")
        self.venue, self.matching = venue, matching
        self.partial_timeout_ns, self.partial_rule = partial_timeout_ns, partial_rule
        self.partial_penalty_ns = partial_penalty_ns
        self.max_output_bytes = max_output_bytes
        self.counts: Counter[str] = Counter()
        self._rows: list[tuple] = []
        self.reads: list[Read] | None = [] if keep_reads else None
        self.accepted_ns: dict[int, int] = {}      # the engine's port -> when its connection was accepted
        self._conn: _Connection | None = None
        self._connections = 0
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            enable_rx_stamps(server)               # the kernel turns stamping on asynchronously: start early
            server.bind((host, port))
            server.listen(1)
        except OSError as exc:
            server.close()
            if exc.errno == errno.EADDRINUSE:
                raise VenueError(f"port {host}:{port} is busy") from None
            raise VenueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        server.setblocking(False)
        self._server = server
        self.address: tuple[str, int] = server.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(server, selectors.EVENT_READ)
        matching.listener = self._on_feed_events

    # -- the loop ----------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> int:
        """Wait up to timeout_s for the engine; handle one read of what it sent. Returns messages handled."""
        handled = 0
        for key, mask in self._selector.select(timeout_s):
            conn = self._conn
            if key.fileobj is self._server:
                self._accept()
            elif conn is not None and key.fileobj is conn.sock:
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
                if mask & selectors.EVENT_READ and self._conn is conn:
                    handled += self._read(conn)
        self._check_partial(time.time_ns())
        return handled

    def records(self) -> np.ndarray:
        """One row per message received (RECORD_DTYPE), in arrival order."""
        return np.array(self._rows, RECORD_DTYPE)

    def stats(self) -> dict[str, int]:
        """Counters of connections, messages (voids among them), malformed input, partial rules, slow consumers,
        bytes, connections reset by the client and clients gone with a message half sent."""
        keys = ("connections", "disconnects", "refused", "messages", "voids", "session_messages", "malformed",
                "partial_timeouts", "partial_penalised", "bytes", "unstamped_reads", "slow_consumer_disconnects",
                "resets", "disconnects_mid_message")
        return {key: self.counts[key] for key in keys}

    @property
    def pending_output_bytes(self) -> int:
        """Reply bytes waiting for the connected client to make room (0: none, or no client)."""
        return len(self._conn.outbox) if self._conn is not None else 0

    def close(self) -> None:
        if self._conn is not None:
            self._disconnect(self._conn)
        self._selector.close()
        self._server.close()
        self.matching.listener = None

    def __enter__(self) -> OrderGateway:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- connections -------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, peer = self._server.accept()
        except BlockingIOError:
            return
        if self._conn is not None:                 # one engine at a time
            sock.close()
            self.counts["refused"] += 1
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_rx_stamps(sock)
        self._connections += 1
        self._conn = _Connection(sock, self._connections, peer[1], server=self.order_protocol.server())
        self.accepted_ns[peer[1]] = time.time_ns()
        self._selector.register(sock, selectors.EVENT_READ)
        self.counts["connections"] += 1

    def _disconnect(self, conn: _Connection) -> None:
        if conn.outbox:
            try:
                conn.sock.send(conn.outbox)        # once, best effort: the rest is dropped
            except OSError:
                pass
        self._selector.unregister(conn.sock)
        conn.sock.close()
        self._conn = None
        self.counts["disconnects"] += 1
        self.matching.cancel_all(time.time_ns())

    def _check_partial(self, now_ns: int) -> None:
        conn = self._conn
        if (conn is not None and conn.inbox and self.partial_rule == "timeout"
                and now_ns - conn.first_seen_ns > self.partial_timeout_ns):
            self.counts["partial_timeouts"] += 1
            self._disconnect(conn)

    # -- receiving ---------------------------------------------------------------------------
    def _read(self, conn: _Connection) -> int:
        """One read (at most RECV_BYTES) of what the socket holds; returns messages handled. What is left
        waits for the next poll (the selector still reports it): reading until the socket was empty, a
        client that sent faster than the venue handles held the loop for as long as it kept sending, and
        the venue's other gateways and its feed waited (issue 16)."""
        try:
            got = recv_stamped(conn.sock, RECV_BYTES)
        except OSError as exc:
            self._left(conn, exc)
            return 0
        if got is None:
            return 0
        data, rx_ns = got
        if not data:
            self._left(conn)
            return 0
        return self._on_read(conn, data, rx_ns or 0)

    def _left(self, conn: _Connection, error: OSError | None = None) -> None:
        """The client closed the connection (or it failed: `error`); a message it had begun is counted, then
        dropped."""
        self.counts["resets"] += isinstance(error, ConnectionResetError)
        self.counts["disconnects_mid_message"] += bool(conn.inbox)
        self._disconnect(conn)

    def _on_read(self, conn: _Connection, data: bytes, rx_ns: int) -> int:
        seen_ns = rx_ns or time.time_ns()
        if self.reads is not None:
            self.reads.append(Read(conn.peer_port, rx_ns, conn.stream_offset + len(conn.inbox), data))
        self.counts["bytes"] += len(data)
        self.counts["unstamped_reads"] += not rx_ns
        if not conn.inbox:
            conn.first_rx_ns, conn.first_seen_ns, conn.segments = rx_ns, seen_ns, 0
        conn.segments += 1
        conn.inbox += data
        handled = 0
        while self._conn is conn and conn.inbox:
            try:
                size = conn.server.message_size(conn.inbox)
            except ProtocolError:
                self.counts["malformed"] += 1
                self._disconnect(conn)
                break
            if size is None:
                break
            message = bytes(conn.inbox[:size])
            del conn.inbox[:size]
            waited = seen_ns - conn.first_seen_ns
            penalised = waited > self.partial_timeout_ns
            if penalised and self.partial_rule == "timeout":
                self.counts["partial_timeouts"] += 1
                self._disconnect(conn)
                break
            self.counts["partial_penalised"] += penalised
            arrival = _Arrival(conn.first_rx_ns, rx_ns, conn.segments, size, conn.stream_offset, conn.number,
                               seen_ns + (self.partial_penalty_ns if penalised else 0), penalised)
            conn.stream_offset += size
            conn.first_rx_ns, conn.first_seen_ns, conn.segments = rx_ns, seen_ns, 1   # the next one starts here
            if self._handle(conn, message, arrival):
                handled += 1
        return handled

    # -- one message -------------------------------------------------------------------------
    def _handle(self, conn: _Connection, message: bytes, arrival: _Arrival) -> bool:
        """Give one complete message to the matching engine and answer it. False if malformed."""
        try:
            request = conn.server.request(message)
        except ProtocolError:
            self.counts["malformed"] += 1
            self._disconnect(conn)
            return False
        if request.kind in ("session", "rejected"):    # a login, a heartbeat, or a bad message answered
            self.counts["session_messages" if request.kind == "session" else "malformed"] += 1
            if request.answer:
                conn.outbox += request.answer
                self._flush(conn)
            return True
        self.counts["messages"] += 1
        if request.kind == "void":
            self.counts["voids"] += 1
            events = []
        elif request.kind == "new":
            events = self.matching.new_order(request.instrument, request.side, request.price, request.qty,
                                             request.time_in_force, request.client_order_id, arrival.handled_ns)
        else:
            events = self.matching.cancel(request.client_order_id, request.orig_client_order_id, arrival.handled_ns)
        self._rows.append((self.venue, request.kind, request.client_order_id, request.trigger_seq, *arrival,
                           *_outcome(request.kind, events)))
        if events:
            self._send(conn, events)
        return True

    # -- answering ---------------------------------------------------------------------------
    def _on_feed_events(self, events: list[Event]) -> None:
        """Fills of resting orders the venue's feed caused (the matching engine's listener)."""
        if self._conn is not None:
            self._send(self._conn, events)

    def _send(self, conn: _Connection, events: list[Event]) -> None:
        """Queue the replies and send what the kernel takes now; never waits."""
        conn.outbox += b"".join(conn.server.reply(event) for event in events)
        self._flush(conn)
        if self._conn is conn and len(conn.outbox) > self.max_output_bytes:
            self.counts["slow_consumer_disconnects"] += 1
            self._disconnect(conn)

    def _flush(self, conn: _Connection) -> None:
        """One non-blocking send of the output buffer; watch for writability while bytes remain."""
        try:
            del conn.outbox[:conn.sock.send(conn.outbox)]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._left(conn, exc)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        if self._selector.get_key(conn.sock).events != events:
            self._selector.modify(conn.sock, events)

def _outcome(kind: str, events: list[Event]) -> tuple[str, int, int]:
    """(outcome, qty filled at once, reject reason) of one request."""
    if kind == "void":
        return "void", 0, 0
    filled = sum(e.qty for e in events if e.kind == "fill")
    reject = next((e.reason for e in events if e.kind == "reject"), 0)
    if reject:
        return "rejected", 0, reject
    return ("acked" if kind == "new" else "cancelled"), filled, 0
