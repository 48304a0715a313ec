"""OrderGateway: OrderRequests out to each venue over TCP, acks and fills back.

Strategies (docs/concepts.md):
- none: the whole NewOrder in one send() at the decision.
- tcp-prefix: the next order's decision-free prefix (length, type, flags,
  account, client order id) is always on the wire ahead of time; the decision
  sends only the rest. A cancel that must go while a prefix is primed first
  completes the primed order as a *void* order (side 0, qty 0), which the venue
  discards; `voided` counts them.

Order entry is any registered order protocol (engine.protocol.registry), named per venue
(`orders = "binary"`, the default, or `"fix"`): each session's client encodes the orders,
prefixes, voids and cancels, and decodes the venue's replies. A FIX session, for one,
primes the NewOrderSingle's first 133 bytes (header, Account, ClOrdID, HandlInst, OrdType
up to `59=`), and completes an interrupted one with quantity 0, which the venue rejects.

Every send() is stamped by the kernel (TX, MSG_ERRQUEUE, keyed by stream
offset). The gateway owns the wire's client order ids (a prefix needs its id
before the Overseer has decided anything) and maps them to the Overseer's.
"""
from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from engine.clock import tsc
from engine.messages import ACCOUNT_UPDATE, ORDER_REQUEST
from engine.net import recv_stamped, tcp_connect, tx_stamps
from engine.protocol.registry import DEFAULT_ORDERS, order_protocol
from engine.telemetry import TelemetryRecorder

REQUEST = ORDER_REQUEST.struct
ACCOUNT = ACCOUNT_UPDATE.struct
STRATEGIES = ("none", "tcp-prefix")
CANCEL_KIND = ord("C")


@dataclass
class Session:
    """One TCP session with one venue."""
    venue: int
    host: str
    port: int
    account: int = 1
    orders: str = DEFAULT_ORDERS               # order entry protocol's name (engine.protocol.registry)
    sender: str = "WIRELAB1"                   # FIX CompIDs (8 characters)
    target: str = "VENUE001"
    sock: socket.socket | None = None
    sent: int = 0                              # bytes sent on this connection
    primed: int | None = None                  # wire id whose prefix is on the wire
    primed_end: int = 0                        # stream offset of that prefix's last byte
    next_wire_id: int = 1
    to_overseer: dict = field(default_factory=dict)   # wire id -> (overseer id, is cancel, target), while live
    wire_of: dict = field(default_factory=dict)       # overseer id of a live order -> its wire id
    prefix_tx_ns: dict = field(default_factory=dict)  # wire id -> kernel TX stamp of its prefix
    prefix_end: dict = field(default_factory=dict)    # stream end offset of a prefix -> wire id
    inbox: bytearray = field(default_factory=bytearray)
    client: object = None                      # the protocol's encoder and decoder, new per connection
    retry_at: float = 0.0
    retries: int = 0

    def __post_init__(self):
        self.new_client()

    def new_client(self) -> None:
        self.client = order_protocol(self.orders).client(self.account, self.sender, self.target)


class OrderGateway:
    def __init__(self, sessions: list[Session], requests, accounts, telemetry: TelemetryRecorder,
                 strategy: str = "none", max_retries: int = 5, backoff_s: float = 0.05):
        if strategy not in STRATEGIES:
            raise ValueError(f"gateway strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.sessions = {s.venue: s for s in sessions}
        self.requests, self.accounts, self.telemetry = requests, accounts, telemetry
        self.strategy, self.max_retries, self.backoff_s = strategy, max_retries, backoff_s
        self.counts: Counter[str] = Counter()
        self.failed = False                    # a venue stayed down after every retry
        self.on_connect = self.on_disconnect = None   # the runner's hooks to (un)register sockets

    # -- connections -------------------------------------------------------------------------
    def connect_all(self) -> None:
        for session in self.sessions.values():
            self._connect(session)

    def _connect(self, session: Session) -> bool:
        try:
            session.sock = tcp_connect(session.host, session.port)
        except OSError:
            session.sock = None
            return False
        if self.on_connect is not None:
            self.on_connect(session)
        session.sent, session.primed, session.inbox = 0, None, bytearray()
        session.new_client()
        session.retries = 0
        self.counts["connects"] += 1
        self.accounts.publish(ACCOUNT.pack(0, tsc(), 0, 0, session.venue, ord("U"), 0, 0, 0, 0, 0))
        login = session.client.login()
        if login and not self._send(session, login):
            return False
        self._prime(session)
        return True

    def _disconnected(self, session: Session) -> None:
        if session.sock is not None:
            if self.on_disconnect is not None:
                self.on_disconnect(session)
            session.sock.close()
        session.sock = None
        session.to_overseer.clear()                    # the venue cancels on disconnect: nothing is live
        session.wire_of.clear()
        session.retry_at = time.monotonic() + self.backoff_s
        self.counts["disconnects"] += 1
        self.accounts.publish(ACCOUNT.pack(0, tsc(), 0, 0, session.venue, ord("D"), 0, 0, 0, 0, 0))

    def _retry(self, session: Session) -> None:
        if time.monotonic() < session.retry_at:
            return
        if self._connect(session):
            return
        session.retries += 1
        if session.retries > self.max_retries:
            self.failed = True
        session.retry_at = time.monotonic() + self.backoff_s * 2 ** session.retries

    def close(self) -> None:
        for session in self.sessions.values():
            if session.sock is not None:
                self._drain_stamps(session)
                session.sock.close()
                session.sock = None

    # -- the hot path ------------------------------------------------------------------------
    def poll(self) -> int:
        """Send every request waiting on the orders queue; retry venues that are down. Returns requests sent."""
        sent = 0
        while (raw := self.requests.poll_bytes()) is not None:
            self.send(raw)
            sent += 1
        self.retry_down()
        return sent

    def retry_down(self) -> None:
        for session in self.sessions.values():
            if session.sock is None:
                self._retry(session)

    def on_readable(self, session: Session, stamps_waiting: bool) -> None:
        """The session's socket has data, or (stamps_waiting) TX stamps on its error queue."""
        if session.sock is None:
            return
        if stamps_waiting:
            self._drain_stamps(session)
        self._receive(session)

    def poll_sockets(self) -> None:
        """Read every session without readiness information (tests, shutdown)."""
        for session in self.sessions.values():
            self.on_readable(session, True)

    def send(self, raw: bytes) -> None:
        self.submit(REQUEST.unpack(raw))

    def submit(self, request: tuple) -> None:
        """Send one OrderRequest (its fields); the bookkeeping follows the send."""
        (origin, _pub, client_id, md_seq, venue, _model, instrument, kind, side, tif, price, qty, target,
         decided, kernel_rx) = request
        session = self.sessions.get(venue)
        if session is None or session.sock is None:
            self.counts["requests for a venue that is down"] += 1
            return
        if kind == CANCEL_KIND:
            self._cancel(session, client_id, md_seq, target, instrument, side, qty)
            return
        primed = session.primed
        if primed is not None:
            wire_id = primed
        else:                                          # _new_wire_id, inlined: this is the hot path
            wire_id = session.next_wire_id
            session.next_wire_id = wire_id + 1
        client = session.client
        data = (client.order(wire_id, md_seq, instrument, side, tif, price, qty) if primed is None
                else client.rest(wire_id, md_seq, instrument, side, tif, price, qty))
        app_out = tsc()
        if not self._send(session, data):
            return
        session.to_overseer[wire_id] = (client_id, False, 0)
        session.wire_of[client_id] = wire_id
        prefix_ns = session.prefix_tx_ns.pop(wire_id, 0)
        prefix_end = None
        if primed is not None and not prefix_ns:       # its stamp is still to come: telemetry takes it
            prefix_end = session.primed_end
            session.prefix_end.pop(prefix_end, None)
        self.telemetry.record(venue, session.sent - 1, (
            md_seq, venue, wire_id, kernel_rx, origin, decided, app_out, 0, prefix_ns, len(data),
            client.order_bytes - len(data)), prefix_end)
        session.primed = None
        self.counts["orders"] += 1
        self._prime(session)

    def _cancel(self, session: Session, request_id: int, md_seq: int, target: int, instrument: int, side: int,
                qty: int) -> None:
        target_wire = session.wire_of.get(target)
        if target_wire is None:
            self.counts["cancel of an unknown order"] += 1
            return
        if session.primed is not None:                 # complete the started message first
            if not self._send(session, session.client.void(session.primed)):
                return
            session.prefix_tx_ns.pop(session.primed, None)
            session.prefix_end.pop(session.primed_end, None)
            session.primed = None
            self.counts["voided"] += 1
        wire_id = self._new_wire_id(session)
        session.to_overseer[wire_id] = (request_id, True, target)
        message = session.client.cancel(wire_id, md_seq, target_wire, instrument, side, qty)
        if self._send(session, message):
            self.counts["cancels"] += 1
            self._prime(session)

    def _prime(self, session: Session) -> None:
        if self.strategy != "tcp-prefix" or session.sock is None:
            return
        wire_id = self._new_wire_id(session)
        if self._send(session, session.client.prefix(wire_id)):
            session.primed, session.primed_end = wire_id, session.sent - 1
            session.prefix_end[session.primed_end] = wire_id

    def _new_wire_id(self, session: Session) -> int:
        wire_id = session.next_wire_id
        session.next_wire_id += 1
        return wire_id

    def _send(self, session: Session, data: bytes) -> bool:
        sock = session.sock
        try:
            sent = sock.send(data)
            if sent < len(data):                       # rare on loopback: finish it blocking
                sock.setblocking(True)
                sock.sendall(data[sent:])
                sock.setblocking(False)
        except OSError:
            self._disconnected(session)
            return False
        session.sent += len(data)
        return True

    # -- from the venue ----------------------------------------------------------------------
    def _receive(self, session: Session) -> None:
        try:
            got = recv_stamped(session.sock)
        except OSError:
            self._disconnected(session)
            return
        if got is None:
            return
        data, rx_ns = got
        if not data:
            self._disconnected(session)
            return
        session.inbox += data
        self._on_replies(session, rx_ns or 0)

    def _drain_stamps(self, session: Session) -> None:
        for end_offset, ns in tx_stamps(session.sock):
            if self.telemetry.tx_stamp(session.venue, end_offset, ns):
                continue
            wire_id = session.prefix_end.pop(end_offset, None)
            if wire_id is not None:
                session.prefix_tx_ns[wire_id] = ns

    def _on_replies(self, session: Session, rx_ns: int) -> None:
        replies = session.client.replies(session.inbox)
        self.counts["malformed venue messages"] += replies.malformed
        self.counts["unexpected venue messages"] += replies.unexpected
        now = tsc()
        for kind, wire_id, venue_order, side, price, qty, leaves in replies.events:
            oid, is_cancel, target = session.to_overseer.get(wire_id, (0, False, 0))
            self.counts["rejects"] += kind == "R"
            if is_cancel:                              # about our cancel request: only "cancelled" matters
                if kind == "X":
                    self._account(now, target, venue_order, session.venue, "X", 0, 0, 0, 0, rx_ns)
                    _forget(session, session.wire_of.get(target))
                if kind in ("X", "R"):
                    _forget(session, wire_id)
                continue
            self._account(now, oid, venue_order, session.venue, kind, side, price, qty, leaves, rx_ns)
            if kind in ("X", "R") or (kind == "F" and leaves == 0):
                _forget(session, wire_id)
        if replies.broken:
            self._disconnected(session)                # the stream cannot be re-synchronised
            return
        del session.inbox[:replies.consumed]

    def _account(self, now, oid, venue_order, venue, kind, side, price, qty, leaves, rx_ns):
        self.accounts.publish(ACCOUNT.pack(now, now, oid, venue_order, venue, ord(kind), side, price, qty,
                                           leaves, rx_ns))


def _forget(session: Session, wire_id: int | None) -> None:
    """A finished order or cancel request: nothing more will come about it (keeps the maps small)."""
    entry = session.to_overseer.pop(wire_id, None)
    if entry is not None and not entry[1]:
        session.wire_of.pop(entry[0], None)
