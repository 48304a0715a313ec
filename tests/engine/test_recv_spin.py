"""engine._native.recv_spin: every waiting datagram and its kernel RX stamp in one recvmmsg call,
after polling several feeds in C until one has datagrams."""
import socket
import time

import pytest

from engine._native import recv_spin
from engine.clock import calibrate
from engine.net import udp_receiver
from engine.protocol import md
from engine.runner import Engine
from test_net import wait_readable, warm_up


@pytest.fixture
def pair():
    rx = udp_receiver()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        warm_up(rx, tx)
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def recv_batch(fd: int, max_count: int) -> list:
    """One look at one feed: the datagrams waiting on it, [] if none."""
    got = recv_spin([fd], max_count, 0)
    return [] if got is None else got[1]


def send_all(rx, tx, payloads) -> tuple[int, int]:
    """Send the datagrams; return the (before, after) wall-clock window they were sent in."""
    before = time.time_ns()
    for payload in payloads:
        tx.sendto(payload, rx.getsockname())
    after = time.time_ns()
    wait_readable(rx)
    return before, after


def test_a_batch_holds_the_waiting_datagrams_in_order_with_their_stamps(pair):
    rx, tx = pair
    payloads = [bytes([i]) * (i + 1) for i in range(10)] + [b"", b"m" * 9000]
    before, after = send_all(rx, tx, payloads)
    got = recv_batch(rx.fileno(), 64)
    assert [data for data, _ in got] == payloads
    stamps = [stamp for _, stamp in got]
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after
    assert recv_batch(rx.fileno(), 64) == []


def test_max_count_bounds_a_batch_and_the_rest_waits_for_the_next(pair):
    rx, tx = pair
    payloads = [b"md %d" % i for i in range(7)]
    send_all(rx, tx, payloads)
    first, second = recv_batch(rx.fileno(), 4), recv_batch(rx.fileno(), 4)
    assert [data for data, _ in first] == payloads[:4]
    assert [data for data, _ in second] == payloads[4:]


def test_a_socket_without_rx_stamping_gives_stamp_zero():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.sendto(b"plain", rx.getsockname())
        wait_readable(rx)
        assert recv_batch(rx.fileno(), 8) == [(b"plain", 0)]
    finally:
        rx.close()
        tx.close()


def test_a_closed_descriptor_raises_os_error():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError):
        recv_batch(fd, 4)


def test_recv_spin_returns_the_feed_that_has_datagrams_and_its_batch(pair):
    rx, tx = pair
    quiet = udp_receiver()
    try:
        before, after = send_all(rx, tx, [b"one", b"two"])
        index, batch = recv_spin([quiet.fileno(), rx.fileno()], 8, 0)
    finally:
        quiet.close()
    assert index == 1 and [payload for payload, _ in batch] == [b"one", b"two"]
    assert all(before <= stamp <= after for _, stamp in batch)


def test_recv_spin_gives_none_after_spinning_its_budget_on_empty_feeds(pair):
    rx, _ = pair
    ticks = calibrate(duration_s=0.02, samples=50).frequency_hz // 1000       # 1 ms
    start = time.monotonic_ns()
    assert recv_spin([rx.fileno()], 8, ticks) is None
    assert time.monotonic_ns() - start >= 900_000                             # it waited, not one look


@pytest.mark.parametrize("fds, count, error", [([], 4, ValueError), ([-1], 4, ValueError), ([0], 0, ValueError),
                                               ([0], 65, ValueError), (7, 4, TypeError), (["x"], 4, TypeError)])
def test_recv_spin_bad_arguments_raise(fds, count, error):
    with pytest.raises(error, match="recv_spin|integer"):
        recv_spin(fds, count, 0)


def test_the_engine_reads_every_waiting_datagram_in_order_with_its_stamp():
    from test_hot_path import config, queue_contents   # the single-process engine's config, the md queue
    from test_persistence import market
    grams = market(40)
    with Engine(config("batch", "single")) as engine:
        feed = engine.feeds[0]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            warm_up(feed, tx)
            recv_batch(feed.fileno(), 64)                       # the warm-up datagrams
            before, after = send_all(feed, tx, grams)
            while engine.md.handled < len(grams) and time.time_ns() < after + 2 * 10**9:
                engine.read_feeds()
        finally:
            tx.close()
        updates = queue_contents(engine)["md"]
    assert engine.md.handled == len(grams) and not engine.md.dropped
    assert [u[2] for u in updates] == [md.decode_md(g).seq for g in grams]       # md_seq, in order
    stamps, app_in = [u[1] for u in updates], [u[0] for u in updates]                  # kernel_rx_ns, origin
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    assert app_in == sorted(app_in) and len(set(app_in)) == len(app_in)                  # stamped one by one
