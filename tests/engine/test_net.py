"""Kernel timestamps on loopback: UDP RX stamps, TCP TX stamps keyed by byte offset."""
import select
import socket
import time

from engine.net import recv_stamped, tcp_connect, tx_stamps, udp_receiver, enable_rx_stamps


def wait_readable(sock, timeout=2.0):
    assert select.select([sock], [], [], timeout)[0], "nothing arrived"


def warm_up(rx, tx):
    """The kernel turns RX stamping on asynchronously: wait until a datagram comes stamped."""
    deadline = time.time() + 2
    while time.time() < deadline:
        tx.sendto(b"warm-up", rx.getsockname())
        wait_readable(rx)
        if recv_stamped(rx)[1] is not None:
            return
        time.sleep(0.01)
    raise AssertionError("the kernel never stamped a datagram")


def test_udp_datagrams_carry_kernel_rx_stamps():
    rx = udp_receiver()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        warm_up(rx, tx)
        stamps = []
        for i in range(20):
            before = time.time_ns()
            tx.sendto(b"md %d" % i, rx.getsockname())
            wait_readable(rx)
            data, stamp = recv_stamped(rx)
            after = time.time_ns()
            assert data == b"md %d" % i
            assert before <= stamp <= after
            stamps.append(stamp)
        assert stamps == sorted(stamps)
        assert recv_stamped(rx) is None
    finally:
        rx.close()
        tx.close()


def test_tcp_tx_stamps_arrive_on_the_error_queue_keyed_by_last_byte():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = tcp_connect(*server.getsockname())
    peer, _ = server.accept()
    enable_rx_stamps(peer)
    try:
        sizes = [16, 48, 7, 100]
        sent, ends, windows = 0, [], []
        for size in sizes:
            before = time.time_ns()
            client.send(b"x" * size)
            windows.append((before, time.time_ns()))
            sent += size
            ends.append(sent - 1)
            time.sleep(0.002)                  # one segment per send
        got = []
        deadline = time.time() + 2
        while len(got) < len(sizes) and time.time() < deadline:
            got += tx_stamps(client)
        assert [key for key, _ in got] == ends
        for (_, stamp), (before, after) in zip(got, windows):
            assert before <= stamp <= after
        peer.setblocking(False)
        received = b""
        while len(received) < sent:
            wait_readable(peer)
            data, stamp = recv_stamped(peer)
            assert stamp is not None
            received += data
        assert received == b"x" * sent
    finally:
        client.close()
        peer.close()
        server.close()
