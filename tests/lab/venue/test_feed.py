"""The feed publisher over loopback: instants kept, kernel TX stamps matched to datagrams."""
import socket
import time

import numpy as np
import pytest

from engine.net import enable_tx_stamps, recv_stamped, tx_stamps, udp_receiver
from engine.protocol.md import HEADER, decode_md
from lab.venue import feed as feed_module
from lab.venue.feed import FeedPublisher
from lab.venue.market import FeedError, synthetic_feed

SEND_TS = HEADER.offset("send_ts_ns")


def drain(sock):
    got = []
    while (item := recv_stamped(sock)) is not None:
        got.append(item)
    return got


@pytest.fixture
def receivers():
    socks = [udp_receiver(), udp_receiver()]
    yield socks
    for sock in socks:
        sock.close()


def test_udp_tx_stamp_ids_count_datagrams_from_zero(receivers):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        enable_tx_stamps(sock)
        sock.connect(receivers[0].getsockname())
        for size in (10, 300, 7, 64):
            sock.send(bytes(size))
        deadline = time.monotonic() + 2
        stamps = []
        while len(stamps) < 4 and time.monotonic() < deadline:
            stamps += tx_stamps(sock)
            time.sleep(0.001)
        assert [key for key, _ns in stamps] == [0, 1, 2, 3]
        assert all(ns > 0 for _key, ns in stamps)
    finally:
        sock.close()


def test_publish_keeps_the_instants_and_matches_kernel_stamps(receivers):
    feed = synthetic_feed(50, 1)
    received, budgets, after_send = [], [], []

    def idle(budget_s):                      # the caller's poll, as the venue gateway's would be
        budgets.append(budget_s)
        received.extend(drain(receivers[0]))

    with FeedPublisher({1: receivers[0].getsockname()}) as publisher:
        start = time.time_ns() + 20_000_000
        deliver_at = start + 2_000_000 * np.arange(50, dtype=np.int64)
        delivery = publisher.publish(feed, deliver_at, idle=idle,
                                     sent=lambda i: after_send.append((i, time.time_ns())))
    deadline = time.monotonic() + 2
    while len(received) < 50 and time.monotonic() < deadline:
        received.extend(drain(receivers[0]))
    assert budgets and min(budgets) > 0
    assert [i for i, _ns in after_send] == list(range(50))
    assert all(ns >= app_ns for (_i, ns), app_ns in zip(after_send, delivery.app_ns))
    assert delivery.refused == delivery.missing_tx_stamps == 0
    assert delivery.seq.tolist() == list(range(1, 51)) and delivery.intended_ns.tolist() == deliver_at.tolist()
    assert delivery.payload_bytes.tolist() == [len(p) for p in feed.payloads]
    tx, app = delivery.kernel_tx_ns, delivery.app_ns
    assert (tx > 0).all() and (np.diff(tx) > 0).all()
    assert (app <= tx).all() and (tx >= deliver_at).all()           # never early
    # every datagram arrived, once, with the send instant in its header and nothing else changed
    by_seq = {decode_md(data).seq: (data, rx) for data, rx in received}
    assert sorted(by_seq) == list(range(1, 51)) and len(received) == 50
    for i, payload in enumerate(feed.payloads):
        data, rx = by_seq[i + 1]
        assert decode_md(data).send_ts_ns == app[i]
        assert data[:SEND_TS] + data[SEND_TS + 8:] == payload[:SEND_TS] + payload[SEND_TS + 8:]
        if rx is not None:                   # the first datagram after stamping is switched on may lack it
            assert tx[i] <= rx                                       # causality
    assert sum(rx is not None for _d, rx in received) >= 49
    late = delivery.late_ns
    assert 0 <= late["p50"] <= late["p99"] <= late["max"] == int((tx - deliver_at).max())
    assert delivery.summary() == {"datagrams": 50, "refused": 0, "missing_tx_stamps": 0, "late_ns": late}


def test_each_venue_gets_its_own_datagrams(receivers):
    feed = synthetic_feed(20, 2, venues=(4, 6))
    destinations = {4: receivers[0].getsockname(), 6: receivers[1].getsockname()}
    with FeedPublisher(destinations) as publisher:
        delivery = publisher.publish(feed, time.time_ns() + 1_000_000 * np.arange(20, dtype=np.int64))
    assert delivery.missing_tx_stamps == 0
    time.sleep(0.01)
    for sock, venue in zip(receivers, (4, 6)):
        got = [decode_md(data) for data, _rx in drain(sock)]
        assert [(d.venue, d.seq) for d in got] == [(venue, seq) for seq in range(1, 11)]


def test_refused_sends_are_counted_not_fatal():
    closed = udp_receiver()
    address = closed.getsockname()
    closed.close()                           # nobody is bound there now: ICMP port unreachable
    feed = synthetic_feed(6, 3)
    with FeedPublisher({1: address}) as publisher:
        delivery = publisher.publish(feed, time.time_ns() + 1_000_000 * np.arange(6, dtype=np.int64))
    stamped = delivery.kernel_tx_ns > 0
    # each refusal reports the previous datagram's ICMP error and sends nothing; the rest are stamped
    assert delivery.refused >= 1
    assert delivery.missing_tx_stamps == delivery.refused == 6 - int(stamped.sum())
    assert (delivery.kernel_tx_ns[stamped] >= delivery.intended_ns[stamped]).all()


def test_progress_is_reported(receivers, monkeypatch):
    monkeypatch.setattr(feed_module, "PROGRESS_EVERY", 10)
    calls = []
    with FeedPublisher({1: receivers[0].getsockname()}) as publisher:
        publisher.publish(synthetic_feed(30, 4), np.full(30, time.time_ns(), np.int64),
                          progress=lambda i, total: calls.append((i, total)))
    assert [call for call in calls if call[0] % 10 == 0] == [(10, 30), (20, 30), (30, 30)]


def test_bad_calls_are_feed_errors(receivers):
    feed = synthetic_feed(5, 5, venues=(1, 2))
    with FeedPublisher({1: receivers[0].getsockname()}) as publisher:
        with pytest.raises(FeedError, match="venue"):
            publisher.publish(feed, np.zeros(5, np.int64))
        with pytest.raises(FeedError, match="4 delivery instants for 5"):
            publisher.publish(feed, np.zeros(4, np.int64))
