"""The OrderGateway's FIX 4.2 session: orders and cancels as a venue reads them (with simplefix)."""
import socket
import time

import pytest
import simplefix

from engine.gateway import ACCOUNT, OrderGateway, Session
from engine.protocol import fix
from engine.protocol import orders as wire
from engine.telemetry import TelemetryRecorder


class Collector:
    def __init__(self):
        self.messages = []

    def publish(self, payload):
        self.messages.append(payload)
        return len(self.messages) - 1


def request(client_id, kind, side, tif, price, qty, target=0, md_seq=7):
    """OrderRequest fields, as the Overseer hands them to the gateway."""
    return (1, 2, client_id, md_seq, 1, 1, 7, ord(kind), side, tif, price, qty, target, 3, 4)


def venue_messages(conn, count):
    parser, got = simplefix.FixParser(), []
    conn.settimeout(5)
    while len(got) < count:
        parser.append_buffer(conn.recv(65536))
        while (message := parser.get_message()) is not None:
            got.append(message)
    return got


def reencoded(message) -> bytes:
    """simplefix's own encoding of the same fields: it computes BodyLength and CheckSum itself."""
    again = simplefix.FixMessage()
    for tag, value in message.pairs:
        if int(tag) not in (9, 10):
            again.append_pair(int(tag), value, header=int(tag) in (8, 35))
    return again.encode()


@pytest.mark.parametrize("strategy", ["none", "tcp-prefix"])
def test_fix_session_sends_cancels_as_order_cancel_requests(strategy):
    server = socket.create_server(("127.0.0.1", 0))
    session = Session(1, "127.0.0.1", server.getsockname()[1], account=5, orders="fix")
    accounts = Collector()
    gateway = OrderGateway([session], None, accounts, TelemetryRecorder(), strategy)
    gateway.connect_all()
    conn, _ = server.accept()
    try:
        gateway.submit(request(11, "N", wire.BUY, wire.DAY, 100 * 10**8, 3))
        gateway.submit(request(12, "C", wire.BUY, wire.DAY, 100 * 10**8, 3, target=11, md_seq=8))
        voided = strategy == "tcp-prefix"            # the prefix primed after the order is completed first
        messages = venue_messages(conn, 2 + voided)
        cancelled = fix.ExecutionReport("VENUE001", "WIRELAB1", 1, time.time_ns(), 900, int(messages[-1].get(11)),
                                        1, "4", "4", "00000007", 1, 3, 0, 0, 0, 0, 0, time.time_ns())
        conn.sendall(cancelled.encode())
        deadline = time.monotonic() + 5
        while len(accounts.messages) < 2 and time.monotonic() < deadline:
            gateway.poll_sockets()
    finally:
        gateway.close()
        conn.close()
        server.close()
    assert [m.get(35) for m in messages] == [b"D"] * (1 + voided) + [b"F"]
    order, cancel = messages[0], messages[1 + voided]
    assert cancel.get(41) == order.get(11) and cancel.get(11) != order.get(11)
    assert (cancel.get(54), int(cancel.get(38)), int(cancel.get(9001))) == (b"1", 3, 8)
    assert cancel.get(55) == order.get(55) and int(cancel.get(1)) == 5
    raw = cancel.encode(raw=True)
    assert len(raw) == fix.ORDER_CANCEL_REQUEST_SIZE
    assert reencoded(cancel) == raw                   # BodyLength and CheckSum agree with simplefix
    assert fix.decode_fix(raw).orig_client_order_id == int(order.get(11))
    seqs = [int(m.get(34)) for m in messages]
    assert sorted(seqs) == list(range(1, len(messages) + 1))
    if voided:
        assert int(messages[1].get(38)) == 0           # the interrupted order, completed empty
    assert gateway.counts["cancels"] == 1 and gateway.counts["voided"] == voided
    update = ACCOUNT.unpack(accounts.messages[-1])      # the venue's "cancelled" is about order 11
    assert (update[2], update[5]) == (11, ord("X"))


def test_finished_orders_and_cancels_leave_the_gateways_maps():
    """Over a long run the maps from wire ids to the Overseer's ids must not grow: an order is
    forgotten once filled, rejected or cancelled, and a cancel request once answered."""
    server = socket.create_server(("127.0.0.1", 0))
    session = Session(1, "127.0.0.1", server.getsockname()[1])
    accounts = Collector()
    gateway = OrderGateway([session], None, accounts, TelemetryRecorder(), "none")
    gateway.connect_all()
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        for oid in range(1, 4):                                     # 3 orders: filled, rejected, resting
            gateway.submit(request(oid, "N", wire.BUY, wire.DAY, 100, 2))
        received = b""
        while len(received) < 3 * wire.NEW_ORDER_SIZE:
            received += conn.recv(65536)
        wire_ids = [wire.decode_order(received[i:i + 48]).client_order_id for i in range(0, 144, 48)]
        live_after_orders = dict(session.to_overseer)
        conn.sendall(wire.Ack(wire.NEW_ORDER_TYPE, wire_ids[0], 1, 0).encode()
                     + wire.Fill(wire.BUY, wire_ids[0], 1, 1, 100, 1, 1, 0).encode()
                     + wire.Fill(wire.BUY, wire_ids[0], 1, 2, 100, 1, 0, 0).encode()
                     + wire.Reject(wire.NEW_ORDER_TYPE, 3, wire_ids[1], 0).encode()
                     + wire.Ack(wire.NEW_ORDER_TYPE, wire_ids[2], 3, 0).encode())
        kinds = lambda: [ACCOUNT.unpack(m)[5] for m in accounts.messages]   # noqa: E731
        while kinds().count(ord("A")) < 2:
            gateway.poll_sockets()
        live_after_replies = dict(session.to_overseer)
        gateway.submit(request(4, "C", wire.BUY, wire.DAY, 100, 2, target=3))
        cancel = wire.decode_order(conn.recv(65536))
        conn.sendall(wire.Ack(wire.CANCEL_TYPE, cancel.client_order_id, 3, 0).encode())
        while ord("X") not in kinds():
            gateway.poll_sockets()
    finally:
        gateway.close()
        conn.close()
        server.close()
    assert set(live_after_orders) == set(wire_ids)
    assert live_after_replies == {wire_ids[2]: (3, False, 0)}     # only the resting order is live
    assert session.to_overseer == {} and session.wire_of == {}
    assert ACCOUNT.unpack(accounts.messages[-1])[2] == 3 and ACCOUNT.unpack(accounts.messages[-1])[5] == ord("X")
