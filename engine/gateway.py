"""OrderGateway: OrderRequests out to each venue over TCP, acks and fills back.

Strategies (DESIGN.md):
- none: the whole NewOrder in one send() at the decision.
- tcp-prefix: the next order's decision-free prefix (length, type, flags,
  account, client order id) is always on the wire ahead of time; the decision
  sends only the rest. A cancel that must go while a prefix is primed first
  completes the primed order as a *void* order (side 0, qty 0), which the venue
  discards; `voided` counts them.

Order entry is binary (engine.protocol.orders) or FIX 4.2 (engine.protocol.fix, fixed
width, `orders = "fix"` per venue). A FIX session primes the NewOrderSingle's first
133 bytes (header, Account, ClOrdID, HandlInst, OrdType up to `59=`); its MsgSeqNum and
SendingTime are fixed when it is primed. A FIX cancel is an OrderCancelRequest (35=F); a
primed FIX order it interrupts is completed with quantity 0, which the venue rejects.

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
from engine.messages import ACCOUNT_UPDATE, ORDER_REQUEST, struct_of
from engine.net import recv_stamped, tcp_connect, tx_stamps
from engine.protocol import fix
from engine.protocol import orders as wire
from engine.protocol.errors import ProtocolError
from engine.telemetry import TelemetryRecorder

REQUEST = struct_of(ORDER_REQUEST)
ACCOUNT = struct_of(ACCOUNT_UPDATE)
NEW_ORDER = struct_of(wire.NEW_ORDER)
CANCEL = struct_of(wire.CANCEL)
ACK = struct_of(wire.ACK)
FILL = struct_of(wire.FILL)
REJECT = struct_of(wire.REJECT)
PREFIX = wire.NEW_ORDER_PREFIX_BYTES
pack_new_order = NEW_ORDER.pack
NEW_ORDER_SIZE, NEW_ORDER_TYPE, FLAG_PREFIX_EARLY = wire.NEW_ORDER_SIZE, wire.NEW_ORDER_TYPE, wire.FLAG_PREFIX_EARLY
STRATEGIES = ("none", "tcp-prefix")
ORDER_FORMATS = ("binary", "fix")
FIX_PREFIX = fix.NEW_ORDER_SINGLE_PREFIX_BYTES
CANCEL_KIND = ord("C")
FIX_EXEC_KINDS = {"0": "A", "1": "F", "2": "F", "4": "X", "8": "R"}   # ExecType -> account update


@dataclass
class Session:
    """One TCP session with one venue."""
    venue: int
    host: str
    port: int
    account: int = 1
    orders: str = "binary"                     # order entry: binary or fix
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
    fix_seq: int = 1                           # next FIX MsgSeqNum
    primed_fix: tuple[int, int] | None = None  # (MsgSeqNum, SendingTime ns) of the primed FIX order
    retry_at: float = 0.0
    retries: int = 0


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
        session.sent, session.primed, session.inbox, session.fix_seq = 0, None, bytearray(), 1
        session.retries = 0
        self.counts["connects"] += 1
        self.accounts.publish(ACCOUNT.pack(0, tsc(), 0, 0, session.venue, ord("U"), 0, 0, 0, 0, 0))
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
        if session.orders == "fix":
            message = self._fix_order(session, wire_id, md_seq, instrument, side, tif, price, qty)
            data = message[FIX_PREFIX:] if primed is not None else message
        elif primed is not None:
            message = pack_new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, FLAG_PREFIX_EARLY, session.account, wire_id,
                                     md_seq, instrument, side, tif, price, qty)
            data = message[PREFIX:]
        else:
            data = message = pack_new_order(NEW_ORDER_SIZE, NEW_ORDER_TYPE, 0, session.account, wire_id, md_seq,
                                            instrument, side, tif, price, qty)
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
            len(message) - len(data)), prefix_end)
        session.primed = session.primed_fix = None
        self.counts["orders"] += 1
        self._prime(session)

    def _cancel(self, session: Session, request_id: int, md_seq: int, target: int, instrument: int, side: int,
                qty: int) -> None:
        target_wire = session.wire_of.get(target)
        if target_wire is None:
            self.counts["cancel of an unknown order"] += 1
            return
        if session.primed is not None:                 # complete the started message first
            if session.orders == "fix":                # quantity 0: the venue rejects it
                void = self._fix_order(session, session.primed, 0, 0, 1, wire.IOC, 0, 0)[FIX_PREFIX:]
            else:
                void = NEW_ORDER.pack(wire.NEW_ORDER_SIZE, wire.NEW_ORDER_TYPE, wire.FLAG_PREFIX_EARLY,
                                      session.account, session.primed, 0, 0, 0, 0, 0, 0)[PREFIX:]
            if not self._send(session, void):
                return
            session.prefix_tx_ns.pop(session.primed, None)
            session.prefix_end.pop(session.primed_end, None)
            session.primed = session.primed_fix = None
            self.counts["voided"] += 1
        wire_id = self._new_wire_id(session)
        session.to_overseer[wire_id] = (request_id, True, target)
        if session.orders == "fix":
            now = time.time_ns()
            message = fix.OrderCancelRequest(session.sender, session.target, session.fix_seq, now, session.account,
                                             target_wire, wire_id, md_seq, f"{instrument:08d}", side or 1, qty,
                                             now).encode()
            session.fix_seq += 1
        else:
            message = CANCEL.pack(wire.CANCEL.size, wire.CANCEL_TYPE, 0, session.account, wire_id, md_seq,
                                  target_wire)
        if self._send(session, message):
            self.counts["cancels"] += 1
            self._prime(session)

    def _fix_order(self, session: Session, wire_id, md_seq, instrument, side, tif, price, qty) -> bytes:
        """A fixed-width NewOrderSingle; the primed one's MsgSeqNum and SendingTime if primed."""
        if session.primed_fix is not None:
            seq_num, sending_time = session.primed_fix
        else:
            seq_num, sending_time = session.fix_seq, time.time_ns()
            session.fix_seq += 1
        return fix.NewOrderSingle(session.sender, session.target, seq_num, sending_time, session.account, wire_id,
                                  md_seq, f"{instrument:08d}", side or 1, qty, price, time.time_ns(),
                                  tif).encode()

    def _prime(self, session: Session) -> None:
        if self.strategy != "tcp-prefix" or session.sock is None:
            return
        wire_id = self._new_wire_id(session)
        if session.orders == "fix":
            session.primed_fix = (session.fix_seq, time.time_ns())
            session.fix_seq += 1
            prefix = self._fix_order(session, wire_id, 0, 0, 1, wire.IOC, 0, 0)[:FIX_PREFIX]
        else:
            prefix = NEW_ORDER.pack(wire.NEW_ORDER_SIZE, wire.NEW_ORDER_TYPE, wire.FLAG_PREFIX_EARLY,
                                    session.account, wire_id, 0, 0, 0, 0, 0, 0)[:PREFIX]
        if self._send(session, prefix):
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
        if session.orders == "fix":
            self._parse_fix(session, rx_ns or 0)
        else:
            self._parse(session, rx_ns or 0)

    def _drain_stamps(self, session: Session) -> None:
        for end_offset, ns in tx_stamps(session.sock):
            if self.telemetry.tx_stamp(session.venue, end_offset, ns):
                continue
            wire_id = session.prefix_end.pop(end_offset, None)
            if wire_id is not None:
                session.prefix_tx_ns[wire_id] = ns

    def _parse(self, session: Session, rx_ns: int) -> None:
        inbox, at = session.inbox, 0
        while len(inbox) - at >= 3:
            length, kind = inbox[at] | inbox[at + 1] << 8, inbox[at + 2]
            if length < 8 or wire.SIZE_BY_TYPE[kind] != length:
                self.counts["malformed venue messages"] += 1
                self._disconnected(session)             # the stream cannot be re-synchronised
                return
            if len(inbox) - at < length:
                break
            self._on_venue_message(session, kind, bytes(inbox[at:at + length]), rx_ns)
            at += length
        del inbox[:at]

    def _parse_fix(self, session: Session, rx_ns: int) -> None:
        frames = fix.frame_fix_stream(bytes(session.inbox))
        now = tsc()
        for offset, length in zip(frames.offset.tolist(), frames.length.tolist()):
            try:
                report = fix.decode_fix(bytes(session.inbox[offset:offset + length]))
            except ProtocolError:
                self.counts["malformed venue messages"] += 1
                continue
            if not isinstance(report, fix.ExecutionReport):
                self.counts["unexpected venue messages"] += 1
                continue
            oid, is_cancel, target = session.to_overseer.get(report.client_order_id, (0, False, 0))
            kind = FIX_EXEC_KINDS[report.exec_type]
            self.counts["rejects"] += kind == "R"
            if is_cancel:                              # about our cancel request: only "cancelled" matters
                if kind == "X":
                    self._account(now, target, report.order_id, session.venue, "X", 0, 0, 0, 0, rx_ns)
                    _forget(session, session.wire_of.get(target))
                if kind in ("X", "R"):
                    _forget(session, report.client_order_id)
                continue
            self._account(now, oid, report.order_id, session.venue, kind, report.side, report.last_price,
                          report.last_qty, report.leaves_qty, rx_ns)
            if kind in ("X", "R") or (kind == "F" and report.leaves_qty == 0):
                _forget(session, report.client_order_id)
        if frames.error:
            self.counts["malformed venue messages"] += 1
            self._disconnected(session)
            return
        del session.inbox[:frames.consumed]

    def _on_venue_message(self, session: Session, kind: int, message: bytes, rx_ns: int) -> None:
        now = tsc()
        if kind == wire.ACK_TYPE:
            _len, _type, acked, wire_id, venue_order, _ts = ACK.unpack(message)
            oid, is_cancel, target = session.to_overseer.get(wire_id, (0, False, 0))
            if acked == wire.CANCEL_TYPE:               # an order is gone: by our cancel, or an IOC
                self._account(now, target if is_cancel else oid, venue_order, session.venue, "X", 0, 0, 0, 0, rx_ns)
                if is_cancel:
                    _forget(session, session.wire_of.get(target))
                _forget(session, wire_id)
            else:
                self._account(now, oid, venue_order, session.venue, "A", 0, 0, 0, 0, rx_ns)
        elif kind == wire.FILL_TYPE:
            _len, _type, side, wire_id, venue_order, _exec, price, qty, leaves, _ts = FILL.unpack(message)
            oid = session.to_overseer.get(wire_id, (0, False, 0))[0]
            self._account(now, oid, venue_order, session.venue, "F", side, price, qty, leaves, rx_ns)
            if leaves == 0:
                _forget(session, wire_id)
        elif kind == wire.REJECT_TYPE:
            _len, _type, _rejected, _reason, wire_id, _ts = REJECT.unpack(message)
            oid, is_cancel, target = session.to_overseer.get(wire_id, (0, False, 0))
            self.counts["rejects"] += 1
            if not is_cancel:
                self._account(now, oid, 0, session.venue, "R", 0, 0, 0, 0, rx_ns)
            _forget(session, wire_id)
        else:
            self.counts["unexpected venue messages"] += 1

    def _account(self, now, oid, venue_order, venue, kind, side, price, qty, leaves, rx_ns):
        self.accounts.publish(ACCOUNT.pack(now, now, oid, venue_order, venue, ord(kind), side, price, qty,
                                           leaves, rx_ns))


def _forget(session: Session, wire_id: int | None) -> None:
    """A finished order or cancel request: nothing more will come about it (keeps the maps small)."""
    entry = session.to_overseer.pop(wire_id, None)
    if entry is not None and not entry[1]:
        session.wire_of.pop(entry[0], None)
