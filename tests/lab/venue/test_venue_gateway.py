"""The venue's order gateway on loopback, against a plain socket client played by the test."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing, contextmanager, suppress

import pytest

from engine.net import recv_stamped, udp_receiver
from engine.protocol import fix, md
from engine.protocol import orders as wire
from lab.venue.gateway import OrderGateway
from lab.venue.matching import REJECT_UNKNOWN_ORDER, MatchingEngine, RiskAverse, VenueError

VENUE, INSTRUMENT = 2, 42
P = 10**8
BID, ASK = 100 * P, 101 * P
PAUSE_S = 0.02


def book_datagram(seq=1, trades=()):
    return md.MdDatagram(VENUE, seq, INSTRUMENT, time.time_ns(), (
        md.L2Update(md.BID, md.SET, BID, 30), md.L2Update(md.ASK, md.SET, ASK, 5)),
        tuple(md.Trade(p, q, 0) for p, q in trades))


@pytest.fixture(scope="module")
def rx_stamping():
    """The kernel turns RX stamping on asynchronously: wait until a datagram comes stamped."""
    with closing(udp_receiver()) as rx, closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as tx:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            tx.sendto(b"warm-up", rx.getsockname())
            if select.select([rx], [], [], 0.1)[0] and recv_stamped(rx)[1] is not None:
                return
        raise AssertionError("the kernel never stamped a datagram")


@pytest.fixture
def make_gateway(rx_stamping):
    made = []

    def make(**options):
        matching = MatchingEngine(VENUE, RiskAverse(), first_order_id=900)
        gateway = OrderGateway(VENUE, matching, **options)
        gateway.matching.on_feed(book_datagram())
        made.append(gateway)
        return gateway
    yield make
    for gateway in made:
        gateway.close()


def connect(gateway):
    client = socket.create_connection(gateway.address, timeout=2.0)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return closing(client)


def pump(gateway, done, seconds=3.0):
    """Poll the gateway until done() holds."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"gateway never got there: {gateway.stats()}"
        gateway.poll(0.01)


def recv_exact(client, size):
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def replies(client, sizes):
    return [wire.decode_order(recv_exact(client, size)) for size in sizes]


def is_closed_by_peer(client):
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def new_order(client_order_id, price=ASK, qty=3, side=wire.BUY, tif=wire.IOC, trigger_seq=77):
    return wire.NewOrder(1, client_order_id, trigger_seq, INSTRUMENT, side, price, qty, tif,
                         wire.FLAG_PREFIX_EARLY).encode()


def test_binary_order_in_two_segments_is_stamped_per_read_and_answered(make_gateway):
    gateway = make_gateway()
    message = new_order(5, qty=3)
    with connect(gateway) as client:
        client.sendall(message[:wire.NEW_ORDER_PREFIX_BYTES])
        pump(gateway, lambda: gateway.stats()["bytes"] == 16)
        time.sleep(PAUSE_S)
        before_second_send = time.time_ns()
        client.sendall(message[wire.NEW_ORDER_PREFIX_BYTES:])
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        ack, fill = replies(client, [wire.ACK.size, wire.FILL.size])
        client.sendall(wire.Cancel(1, 6, 78, 5).encode())          # the IOC is done: rejected
        pump(gateway, lambda: gateway.stats()["messages"] == 2)
        [reject] = replies(client, [wire.REJECT.size])
    assert (ack.acked_type, ack.client_order_id, ack.venue_order_id) == (wire.NEW_ORDER_TYPE, 5, 900)
    assert (fill.client_order_id, fill.side, fill.price, fill.qty, fill.leaves_qty) == (5, wire.BUY, ASK, 3, 0)
    assert (reject.rejected_type, reject.reason, reject.client_order_id) == \
        (wire.CANCEL_TYPE, REJECT_UNKNOWN_ORDER, 6)
    order, cancel = gateway.records()
    assert (order["kind"], order["client_order_id"], order["trigger_seq"], order["segments"],
            order["message_bytes"], order["stream_offset"], order["connection"], order["outcome"],
            order["filled_qty"]) == (b"new", 5, 77, 2, 48, 0, 1, b"acked", 3)
    assert 0 < order["first_byte_rx_ns"] < order["last_byte_rx_ns"]
    assert order["last_byte_rx_ns"] >= before_second_send        # causality: stamped after it was sent
    assert order["handled_ns"] == order["last_byte_rx_ns"] == ack.venue_ts_ns == fill.venue_ts_ns
    assert (cancel["kind"], cancel["stream_offset"], cancel["segments"], cancel["outcome"],
            cancel["reject_reason"]) == (b"cancel", 48, 1, b"rejected", REJECT_UNKNOWN_ORDER)
    assert gateway.stats()["bytes"] == 48 + 32


def fix_order(client_order_id, qty=3, seq=1):
    return fix.NewOrderSingle("WIRELAB1", "VENUEGW1", seq, time.time_ns(), 7, client_order_id, 1001,
                              f"{INSTRUMENT:08d}", 1, qty, ASK, time.time_ns(), 3).encode()


def test_fix_order_in_three_pieces_gets_execution_reports(make_gateway):
    gateway = make_gateway(protocol="fix")
    message = fix_order(90001)
    cuts = [0, fix.NEW_ORDER_SINGLE_PREFIX_BYTES, 200, len(message)]
    with connect(gateway) as client:
        for i, (start, end) in enumerate(zip(cuts, cuts[1:])):
            client.sendall(message[start:end])
            pump(gateway, lambda: gateway.stats()["bytes"] == end)
            time.sleep(PAUSE_S if i < 2 else 0)
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        ack, fill = (fix.decode_fix(recv_exact(client, fix.EXECUTION_REPORT_SIZE)) for _ in range(2))
    assert (ack.exec_type, ack.client_order_id, ack.order_id, ack.sender, ack.target, ack.msg_seq_num) == \
        ("0", 90001, 900, "VENUEGW1", "WIRELAB1", 1)
    assert (fill.exec_type, fill.ord_status, fill.last_qty, fill.last_price, fill.leaves_qty, fill.cum_qty,
            fill.avg_price, fill.symbol, fill.msg_seq_num) == ("2", "2", 3, ASK, 0, 3, ASK, f"{INSTRUMENT:08d}", 2)
    [record] = gateway.records()
    assert (record["segments"], record["message_bytes"], record["trigger_seq"]) == (3, len(message), 1001)
    assert record["first_byte_rx_ns"] < record["last_byte_rx_ns"]


def test_fix_cancel_of_a_resting_order_and_a_reject_of_an_unknown_symbol(make_gateway):
    gateway = make_gateway(protocol="fix")
    resting = fix.NewOrderSingle("WIRELAB1", "VENUEGW1", 1, time.time_ns(), 7, 11, 1001, f"{INSTRUMENT:08d}", 1,
                                 4, BID, time.time_ns(), 0).encode()
    unknown = fix.NewOrderSingle("WIRELAB1", "VENUEGW1", 2, time.time_ns(), 7, 12, 1001, "SYMBOLXY", 1, 4, BID,
                                 time.time_ns(), 0).encode()
    cancel = fix.OrderCancelRequest("WIRELAB1", "VENUEGW1", 3, time.time_ns(), 7, 11, 13, 1002,
                                    f"{INSTRUMENT:08d}", 1, 4, time.time_ns()).encode()
    with connect(gateway) as client:
        client.sendall(resting + unknown + cancel)
        pump(gateway, lambda: gateway.stats()["messages"] == 3)
        reports = [fix.decode_fix(recv_exact(client, fix.EXECUTION_REPORT_SIZE)) for _ in range(3)]
    assert [(r.exec_type, r.client_order_id, r.leaves_qty) for r in reports] == \
        [("0", 11, 4), ("8", 12, 0), ("4", 13, 0)]
    assert reports[2].order_id == reports[0].order_id == 900
    assert [r["outcome"] for r in gateway.records()] == [b"acked", b"rejected", b"cancelled"]
    assert gateway.matching.stats()["resting"] == 0


def test_void_orders_get_no_answer_and_are_recorded_as_void(make_gateway):
    for protocol in ("binary", "fix"):
        gateway = make_gateway(protocol=protocol)
        if protocol == "binary":    # the engine's void: its primed prefix completed with zeros
            void = wire.NEW_ORDER.pack(length=48, msg_type=wire.NEW_ORDER_TYPE, flags=1, account=1,
                                       client_order_id=8)
            messages, answer_size = [void, new_order(9)], wire.ACK.size
        else:
            messages, answer_size = [fix_order(8, qty=0), fix_order(9, seq=2)], fix.EXECUTION_REPORT_SIZE
        with connect(gateway) as client:
            client.sendall(b"".join(messages))
            pump(gateway, lambda: gateway.stats()["messages"] == 2)
            first_answer = recv_exact(client, answer_size)
        decode = wire.decode_order if protocol == "binary" else fix.decode_fix
        assert decode(first_answer).client_order_id == 9
        void_row, order_row = gateway.records()
        assert (void_row["kind"], void_row["outcome"], void_row["client_order_id"]) == (b"void", b"void", 8)
        assert order_row["stream_offset"] == len(messages[0])
        assert gateway.stats()["voids"] == 1
        assert gateway.matching.stats()["orders"] == 1


def test_cancel_of_a_resting_order_and_a_fill_from_the_feed(make_gateway):
    gateway = make_gateway()
    with connect(gateway) as client:
        client.sendall(new_order(1, price=BID, qty=4, tif=wire.DAY) + new_order(2, price=BID, qty=6, tif=wire.DAY))
        pump(gateway, lambda: gateway.stats()["messages"] == 2)
        assert [a.client_order_id for a in replies(client, [wire.ACK.size] * 2)] == [1, 2]
        client.sendall(wire.Cancel(1, 3, 80, 1).encode())
        pump(gateway, lambda: gateway.stats()["messages"] == 3)
        [cancelled] = replies(client, [wire.ACK.size])
        gateway.matching.on_feed(book_datagram(seq=2, trades=((BID - P, 1),)))        # trades through order 2
        [fill] = replies(client, [wire.FILL.size])
    assert (cancelled.acked_type, cancelled.client_order_id, cancelled.venue_order_id) == (wire.CANCEL_TYPE, 3, 900)
    assert (fill.client_order_id, fill.venue_order_id, fill.price, fill.qty, fill.leaves_qty) == (2, 901, BID, 6, 0)
    assert [r["outcome"] for r in gateway.records()] == [b"acked", b"acked", b"cancelled"]


@pytest.mark.parametrize("protocol,garbage", [
    ("binary", b"\x30\x00Z" + bytes(45)),                              # unknown type
    ("binary", b"\x20\x00N" + bytes(29)),                              # NewOrder that says 32 bytes
    ("fix", fix_order(4)[:-4] + b"000\x01"),                           # bad CheckSum
    ("fix", b"GET / HTTP/1.1\r\n\r\n"),
])
def test_malformed_input_closes_the_connection_and_is_counted(make_gateway, protocol, garbage):
    gateway = make_gateway(protocol=protocol)
    with connect(gateway) as client:
        client.sendall(garbage)
        pump(gateway, lambda: gateway.stats()["malformed"] == 1)
        assert is_closed_by_peer(client)
    assert gateway.stats()["messages"] == 0 and len(gateway.records()) == 0


def test_busy_port_is_a_venue_error(make_gateway):
    gateway = make_gateway()
    with pytest.raises(VenueError, match=f"port 127.0.0.1:{gateway.address[1]} is busy"):
        OrderGateway(VENUE, gateway.matching, port=gateway.address[1])
    with pytest.raises(VenueError):
        OrderGateway(VENUE, gateway.matching, protocol="json")


def test_reconnect_after_disconnect_and_one_engine_at_a_time(make_gateway):
    gateway = make_gateway()
    with connect(gateway) as first:
        first.sendall(new_order(1, price=BID, tif=wire.DAY))
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        with connect(gateway) as second:
            pump(gateway, lambda: gateway.stats()["refused"] == 1)
            assert is_closed_by_peer(second)
    pump(gateway, lambda: gateway.stats()["disconnects"] == 1)
    assert gateway.matching.stats()["resting"] == 0                         # cancelled on disconnect
    with connect(gateway) as again:
        again.sendall(new_order(1))
        pump(gateway, lambda: gateway.stats()["messages"] == 2)
        assert replies(again, [wire.ACK.size])[0].client_order_id == 1
    rows = gateway.records()
    assert rows["connection"].tolist() == [1, 2] and rows["stream_offset"].tolist() == [0, 0]
    assert gateway.stats()["connections"] == 2


def test_partial_timeout_rule_drops_the_bytes_and_the_connection(make_gateway):
    gateway = make_gateway(partial_rule="timeout", partial_timeout_ns=1_000_000)
    with connect(gateway) as client:
        client.sendall(new_order(1)[:16])
        pump(gateway, lambda: gateway.stats()["bytes"] == 16)
        time.sleep(PAUSE_S)
        pump(gateway, lambda: gateway.stats()["partial_timeouts"] == 1)
        assert is_closed_by_peer(client)
    assert len(gateway.records()) == 0 and gateway.stats()["disconnects"] == 1


def test_penalise_rule_handles_a_late_completion_at_completion_plus_penalty(make_gateway):
    penalty = 5_000_000
    gateway = make_gateway(partial_rule="penalise", partial_timeout_ns=1_000_000, partial_penalty_ns=penalty)
    message = new_order(1)
    with connect(gateway) as client:
        client.sendall(message[:16])
        pump(gateway, lambda: gateway.stats()["bytes"] == 16)
        time.sleep(PAUSE_S)
        client.sendall(message[16:] + new_order(2))         # the second one arrives whole: no penalty
        pump(gateway, lambda: gateway.stats()["messages"] == 2)
        ack = replies(client, [wire.ACK.size])[0]
    late, whole = gateway.records()
    assert gateway.stats()["partial_penalised"] == 1
    assert late["penalised"] and not whole["penalised"]
    assert late["handled_ns"] == late["last_byte_rx_ns"] + penalty == ack.venue_ts_ns
    assert whole["handled_ns"] == whole["last_byte_rx_ns"] == late["last_byte_rx_ns"]


def test_the_real_engine_trades_against_the_gateway_with_primed_prefixes(make_gateway, tmp_path):
    """tcp-prefix: every order arrives as a primed prefix read before its rest; all fill."""
    gateway = make_gateway()
    with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as feed:
        feed.bind(("127.0.0.1", 0))
        feed_port = feed.getsockname()[1]
    config = tmp_path / "engine.toml"
    config.write_text(f"""
[engine]
name = "venue-gw-{os.getpid()}"
strategy = "tcp-prefix"
telemetry = "{tmp_path / 'run.tel'}"
duration_s = 2.5
[[venues]]
id = {VENUE}
feed = "127.0.0.1:{feed_port}"
gateway = "127.0.0.1:{gateway.address[1]}"
[[instruments]]
venue = {VENUE}
id = {INSTRUMENT}
tick = {P // 100}
[[models]]
type = "imbalance-taker"
venue = {VENUE}
instrument = {INSTRUMENT}
qty = 1
threshold_pct = 70
[risk]
max_position = 1000
max_open_orders = 1000
""")
    engine = subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pump(gateway, lambda: gateway.stats()["connections"] == 1, seconds=10)
        pump(gateway, lambda: gateway.stats()["bytes"] == wire.NEW_ORDER_PREFIX_BYTES)   # the first prefix
        with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sender:
            for seq in range(1, 11):            # lopsided books: the model buys 1 at the ask each time
                lopsided = md.MdDatagram(VENUE, seq, INSTRUMENT, time.time_ns(), (
                    md.L2Update(md.BID, md.SET, BID, 900), md.L2Update(md.ASK, md.SET, ASK, 100)))
                gateway.matching.on_feed(lopsided)
                sender.sendto(lopsided.encode(), ("127.0.0.1", feed_port))
                pump(gateway, lambda: gateway.stats()["bytes"] == 48 * seq + 16)   # filled, next one primed
        while engine.poll() is None:
            gateway.poll(0.01)
        out, err = engine.communicate(timeout=10)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.communicate()
    assert engine.returncode == 0, err
    assert json.loads(out)["positions"] == {str(VENUE): {str(INSTRUMENT): 10}}
    rows = gateway.records()
    assert rows["trigger_seq"].tolist() == list(range(1, 11))
    assert (rows["segments"] == 2).all() and (rows["first_byte_rx_ns"] < rows["last_byte_rx_ns"]).all()
    assert rows["stream_offset"].tolist() == [48 * i for i in range(10)]
    assert (rows["outcome"] == b"acked").all() and (rows["filled_qty"] == 1).all()
    assert gateway.matching.stats()["buy_qty"] == 10


SMALL_BUFFER = 4096                 # the kernel doubles it
SEND_CHUNK = 4096                   # per client send: what one poll then has to handle
MAX_FLOOD_ORDERS = 200_000


@contextmanager
def fails_after(seconds):
    """Turn a hang into a failure: SIGALRM raises in the blocked call."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def connect_slow_reader(gateway):
    """A non-blocking client whose replies fill the kernel's buffers after a few KB each way."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)     # before connect: sets the window
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(gateway.address)
    client.setblocking(False)
    pump(gateway, lambda: gateway.stats()["connections"] == 1)
    gateway._conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)   # no autotuning to MBs
    return closing(client)


def send_while_polling(gateway, client, data, done, seconds=5.0):
    """Send data from the non-blocking client, polling the gateway between sends, until done().

    Returns the slowest poll in s and the most reply bytes the gateway held at once.
    """
    view, sent, slowest, most_pending = memoryview(data), 0, 0.0, 0
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"gateway never got there: {gateway.stats()}"
        if sent < len(view):
            try:
                sent += client.send(view[sent:sent + SEND_CHUNK])
            except BlockingIOError:
                pass
        start = time.monotonic()
        gateway.poll(0.001)
        slowest = max(slowest, time.monotonic() - start)
        most_pending = max(most_pending, gateway.pending_output_bytes)
    return slowest, most_pending


def test_a_client_that_never_reads_is_disconnected_without_stalling_the_gateway(make_gateway):
    bound = 64 << 10
    gateway = make_gateway(max_output_bytes=bound)
    resting = new_order(1, price=BID, tif=wire.DAY)
    flood = new_order(2, price=BID, tif=wire.IOC) * MAX_FLOOD_ORDERS     # each one: an ack and a cancel
    with fails_after(10), connect_slow_reader(gateway) as client:
        slowest, most_pending = send_while_polling(
            gateway, client, resting + flood, lambda: gateway.stats()["slow_consumer_disconnects"] == 1)
        client.settimeout(2.0)                  # what was sent, then the end (or a reset), never a timeout
        with suppress(ConnectionResetError):
            while client.recv(1 << 16):
                pass
    assert slowest < 0.5, f"one poll took {slowest:.3f} s"
    assert 0 < most_pending <= bound
    assert gateway.stats()["disconnects"] == 1 and gateway.pending_output_bytes == 0
    assert gateway.matching.stats()["resting"] == 0                          # cancelled on disconnect


def test_replies_the_kernel_cannot_take_at_once_are_flushed_in_order(make_gateway):
    gateway = make_gateway()
    orders = 2000
    burst = b"".join(new_order(i, price=BID, tif=wire.IOC) for i in range(1, orders + 1))
    with fails_after(10), connect_slow_reader(gateway) as client:
        _slowest, most_pending = send_while_polling(
            gateway, client, burst, lambda: gateway.stats()["messages"] == orders)
        assert most_pending > 0                                             # partial sends happened
        received = bytearray()
        deadline = time.monotonic() + 5.0
        while len(received) < orders * 2 * wire.ACK.size:
            assert time.monotonic() < deadline, f"got {len(received)} bytes, {gateway.pending_output_bytes} pending"
            gateway.poll(0.001)
            try:
                received += client.recv(1 << 16)
            except BlockingIOError:
                pass
    acks = [wire.decode_order(bytes(received[i:i + wire.ACK.size])) for i in range(0, len(received), wire.ACK.size)]
    assert [(a.acked_type, a.client_order_id) for a in acks] == \
        [(t, i) for i in range(1, orders + 1) for t in (wire.NEW_ORDER_TYPE, wire.CANCEL_TYPE)]
    assert gateway.pending_output_bytes == 0
    assert gateway.stats()["slow_consumer_disconnects"] == 0 and gateway.stats()["disconnects"] == 0


def test_max_output_bytes_must_be_positive(make_gateway):
    with pytest.raises(VenueError, match="max_output_bytes"):
        make_gateway(max_output_bytes=0)
