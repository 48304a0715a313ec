"""Live AF_PACKET capture on loopback, checked against the sockets' own kernel stamps
(SO_TIMESTAMPING), dpkt, tcpdump and tshark."""
from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

import dpkt
import numpy as np
import pytest

from engine.net import (
    enable_rx_stamps,
    recv_stamped,
    tcp_connect,
    tx_stamps,
    udp_receiver,
)
from lab.capture import CaptureError, open_capture
from lab.capture.live import LiveCapture

ETHERNET_IPV4_UDP_HEADERS = 14 + 20 + 8
OUTBOUND, INBOUND = 2, 1


def packet_socket_problem() -> str | None:
    if not hasattr(socket, "AF_PACKET"):
        return "AF_PACKET sockets are Linux only"
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return "live capture needs root (CAP_NET_RAW)"
    except OSError as exc:
        return f"AF_PACKET sockets are unavailable: {exc}"
    return None


PROBLEM = packet_socket_problem()
needs_capture = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def wait_readable(sock, timeout=2.0):
    assert select.select([sock], [], [], timeout)[0], "nothing arrived"


def transport(frame: bytes):
    """The TCP or UDP layer of an Ethernet frame, decoded by dpkt."""
    return dpkt.ethernet.Ethernet(frame).data.data


def describe(frame: bytes) -> tuple:
    segment = transport(frame)
    return segment.sport, segment.dport, segment.flags, segment.seq, len(segment.data)


def send_stamped_datagrams(tx, rx, payloads):
    """Send each payload to rx and read it back: [(before send, kernel RX stamp, after recv)]."""
    marks = []
    for payload in payloads:
        before = time.time_ns()
        tx.sendto(payload, rx.getsockname())
        wait_readable(rx)
        data, rx_stamp = recv_stamped(rx)
        after = time.time_ns()
        assert data == payload
        marks.append((before, rx_stamp, after))
    return np.array(marks, np.int64).T


@pytest.fixture
def udp_pair():
    rx = udp_receiver()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield tx, rx
    tx.close()
    rx.close()


@needs_capture
def test_udp_each_datagram_once_outgoing_with_stamps_between_send_and_kernel_rx(udp_pair):
    tx, rx = udp_pair
    port = rx.getsockname()[1]
    payloads = [b"md %03d " % i + bytes(i) for i in range(25)]
    # Three captures of the same traffic: the default (the outgoing copy on lo), both
    # copies, and the incoming copy only.
    with LiveCapture("lo", ports=(port,)) as outgoing, \
            LiveCapture("lo", ports=(port,), directions="both") as both, \
            LiveCapture("lo", ports=(port,), directions="incoming") as incoming:
        before, rx_stamp, after = send_stamped_datagrams(tx, rx, payloads)

    assert outgoing.stats == {"packets": 25, "drops": 0, "kernel_drops": 0, "queue_freezes": 0}
    batch = outgoing.batch
    assert [transport(batch.frame(i)).data for i in range(len(batch))] == payloads
    assert all(transport(batch.frame(i)).dport == port for i in range(len(batch)))
    expected_len = [ETHERNET_IPV4_UDP_HEADERS + len(p) for p in payloads]
    assert batch.wire_len.tolist() == expected_len and batch.caplen.tolist() == expected_len
    assert (batch.direction == OUTBOUND).all()
    ts = batch.ts_ns
    assert (np.diff(ts) > 0).all()
    # Same CLOCK_REALTIME as time.time_ns(): the outgoing copy is stamped inside sendto(),
    # before the loopback driver hands the skb to netif_rx, which takes the RX stamp.
    assert (before <= ts).all() and (ts <= rx_stamp).all() and (rx_stamp <= after).all()
    # A few microseconds of kernel path apart (loose bound: a shared 2-vCPU VM).
    assert np.median(rx_stamp - ts) < 20_000

    # Both copies: outgoing then incoming, identical bytes. Every packet socket gets the
    # same skb clone, so the outgoing stamps equal the default capture's to the ns, and
    # the incoming copy carries the very skb stamp the UDP socket reports (loopback
    # stamps the skb once, in netif_rx): identical, not merely close.
    pairs = both.batch
    assert len(pairs) == 2 * len(payloads)
    assert pairs.direction.tolist() == [OUTBOUND, INBOUND] * len(payloads)
    assert [pairs.frame(i) for i in range(0, len(pairs), 2)] == [batch.frame(i) for i in range(len(batch))]
    assert [pairs.frame(i) for i in range(1, len(pairs), 2)] == [batch.frame(i) for i in range(len(batch))]
    assert pairs.ts_ns[0::2].tolist() == ts.tolist()
    assert pairs.ts_ns[1::2].tolist() == rx_stamp.tolist()
    assert (incoming.batch.direction == INBOUND).all()
    assert incoming.batch.ts_ns.tolist() == rx_stamp.tolist()


@needs_capture
def test_snaplen_cuts_in_the_kernel_and_keeps_the_wire_length(udp_pair):
    tx, rx = udp_pair
    payload = bytes(range(256)) * 4
    with LiveCapture("lo", ports=(rx.getsockname()[1],), snaplen=64) as capture:
        send_stamped_datagrams(tx, rx, [payload])
    batch = capture.batch
    assert batch.caplen.tolist() == [64]
    assert batch.wire_len.tolist() == [ETHERNET_IPV4_UDP_HEADERS + len(payload)]
    assert batch.frame(0)[ETHERNET_IPV4_UDP_HEADERS:] == payload[:64 - ETHERNET_IPV4_UDP_HEADERS]


class Tcpdump:
    """tcpdump on lo writing a ns pcap: a second, independent capture (libpcap keeps the
    incoming copy of each loopback packet)."""

    def __init__(self, path, expression):
        self.path = path
        self.process = subprocess.Popen(
            # A short snaplen and a big buffer: in immediate mode libpcap uses a ring of
            # snaplen-sized frames, 8 with the defaults, and tcpdump dropped packets here.
            ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "512",
             "-B", "8192", "--time-stamp-precision=nano", "-w", str(path), expression],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if select.select([self.process.stderr], [], [], 0.5)[0]:
                if "listening on" in self.process.stderr.readline():
                    return
        self.process.kill()
        raise AssertionError("tcpdump did not start")

    def stop(self, expected_packets: int):
        """Stop once the file holds expected_packets (-U writes each packet as it comes)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.packets_written() < expected_packets:
            time.sleep(0.02)
        self.process.terminate()
        self.process.wait(timeout=10)
        self.report = self.process.stderr.read()
        self.process.stderr.close()

    def packets_written(self) -> int:
        try:
            with open_capture(self.path) as capture:
                return len(capture.read_all())
        except CaptureError:   # not even the file header yet
            return 0


@needs_capture
def test_tcp_exchange_once_each_matching_tcpdump_and_tx_stamps(tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    orders = [b"N order %d " % i + b"x" * (10 * i) for i in range(6)]
    acks = [b"A ack %d" % i for i in range(len(orders))]
    dump = Tcpdump(tmp_path / "tcpdump.pcap", f"tcp port {port}")
    capture = LiveCapture("lo", ports=(port,))
    try:
        with capture:
            client = tcp_connect("127.0.0.1", port)
            client_port = client.getsockname()[1]
            peer, _ = server.accept()
            enable_rx_stamps(peer)
            peer.setblocking(False)
            windows, rx_stamps = [], []
            for order, ack in zip(orders, acks):
                before = time.time_ns()
                client.send(order)
                wait_readable(peer)
                data, rx_stamp = recv_stamped(peer)
                windows.append((before, time.time_ns()))
                assert data == order
                rx_stamps.append(rx_stamp)
                peer.send(ack)
                wait_readable(client)
                assert client.recv(100) == ack
            tx = []
            deadline = time.monotonic() + 2
            while len(tx) < len(orders) and time.monotonic() < deadline:
                tx += tx_stamps(client)
            client.close()
            peer.close()
            time.sleep(0.02)   # the FIN/ACK exchange
    finally:
        dump.stop(expected_packets=capture.stats["packets"])
        server.close()

    batch = capture.batch
    frames = [batch.frame(i) for i in range(len(batch))]
    assert capture.stats["drops"] == 0
    assert (batch.direction == OUTBOUND).all()
    assert len(set(frames)) == len(frames)            # no packet twice
    with open_capture(dump.path) as theirs:
        theirs_batch = theirs.read_all()
    tcpdump_stamps = {theirs_batch.frame(i): int(theirs_batch.ts_ns[i]) for i in range(len(theirs_batch))}
    missing = [describe(f) for f in frames if f not in tcpdump_stamps]
    extra = [describe(f) for f in tcpdump_stamps if f not in set(frames)]
    assert (missing, extra) == ([], []), dump.report   # the same packets, each once
    # tcpdump keeps the incoming copy: stamped after the outgoing one.
    assert all(ts <= tcpdump_stamps[f] for f, ts in zip(frames, batch.ts_ns.tolist()))

    segments = [transport(f) for f in frames]
    assert {frozenset((s.sport, s.dport)) for s in segments} == {frozenset((port, client_port))}
    client_data = [(s, ts) for s, ts in zip(segments, batch.ts_ns.tolist()) if s.dport == port and s.data]
    server_data = [s.data for s in segments if s.sport == port and s.data]
    assert [s.data for s, _ in client_data] == orders
    assert server_data == acks
    # Per order: send() <= outgoing copy <= kernel TX stamp (the loopback driver) <= peer RX stamp.
    ends = np.cumsum([len(o) for o in orders]) - 1
    assert [key for key, _ in tx] == ends.tolist()
    for (_, ts), (_, tx_stamp), rx_stamp, (before, after) in zip(client_data, tx, rx_stamps, windows):
        assert before <= ts <= tx_stamp <= rx_stamp <= after


@needs_capture
def test_pcapng_file_reads_back_with_open_capture_and_tshark(udp_pair, tmp_path, tshark_fields):
    tx, rx = udp_pair
    port = rx.getsockname()[1]
    path = tmp_path / "live.pcapng"
    payloads = [b"datagram %d" % i for i in range(30)]
    with LiveCapture("lo", ports=(port,), out=path, name="host-lo") as to_file, \
            LiveCapture("lo", ports=(port,)) as in_memory:
        send_stamped_datagrams(tx, rx, payloads)
    assert to_file.batch is None and to_file.stats["packets"] == len(payloads)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    memory = in_memory.batch
    with open_capture(path) as capture:
        batch = capture.read_all()
        interfaces = capture.interfaces
    assert capture.damage == []
    assert [(i.linktype, i.name) for i in interfaces] == [(1, "host-lo")]
    assert "kernel software stamps, AF_PACKET" in interfaces[0].description
    assert len(batch) == len(payloads)
    assert batch.ts_ns.tolist() == memory.ts_ns.tolist()   # the same skb stamps
    assert [batch.frame(i) for i in range(len(batch))] == [memory.frame(i) for i in range(len(memory))]
    assert (batch.direction == OUTBOUND).all()

    rows = tshark_fields(path, "frame.time_epoch", "frame.interface_name",
                         "frame.packet_flags_direction", "udp.payload")
    assert len(rows) == len(payloads)
    seconds_fraction = [row[0].split(".") for row in rows]
    assert [int(s) * 10**9 + int(f) for s, f in seconds_fraction] == memory.ts_ns.tolist()
    assert {row[1] for row in rows} == {"host-lo"}
    assert {int(row[2], 0) for row in rows} == {OUTBOUND}
    assert [bytes.fromhex(row[3].replace(":", "")) for row in rows] == payloads


@needs_capture
def test_filter_keeps_only_the_given_ports_either_way_ipv4_and_ipv6(udp_pair):
    tx, watched = udp_pair
    port = watched.getsockname()[1]
    other = udp_receiver()
    server = socket.socket()                 # TCP on another port
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    watched_v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        watched_v6.bind(("::1", port))
        with LiveCapture("lo", ports=(port,)) as capture:
            tx.sendto(b"to the watched port", watched.getsockname())
            tx.sendto(b"to another port", other.getsockname())
            watched.sendto(b"from the watched port", other.getsockname())
            with socket.create_connection(server.getsockname()) as client:
                client.sendall(b"tcp elsewhere")
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx6:
                tx6.sendto(b"ipv6 to the watched port", ("::1", port))
                tx6.sendto(b"ipv6 elsewhere", ("::1", other.getsockname()[1]))
    finally:
        other.close()
        server.close()
        watched_v6.close()
    batch = capture.batch
    got = sorted(dpkt.ethernet.Ethernet(batch.frame(i)).data.data.data for i in range(len(batch)))
    assert got == sorted([b"to the watched port", b"from the watched port", b"ipv6 to the watched port"])


@needs_capture
def test_drops_while_the_ring_is_full_are_counted_and_loud(udp_pair, caplog):
    tx, rx = udp_pair
    port = rx.getsockname()[1]
    sent = [b"burst %04d" % i for i in range(400)]
    # One 4 KiB block (room for about 25 of these) and a reader held back until the
    # burst is over: the ring freezes, the kernel drops the rest and counts them.
    capture = LiveCapture("lo", ports=(port,), ring_bytes=4096, block_bytes=4096)
    released = threading.Event()
    read_blocks = capture._read_retired_blocks
    capture._read_retired_blocks = lambda: (released.wait(), read_blocks())
    with caplog.at_level(logging.WARNING, logger="lab.capture.live"):
        with capture:
            for payload in sent:
                tx.sendto(payload, ("127.0.0.1", port))
            released.set()
    stats = capture.stats
    assert stats["packets"] + stats["drops"] == len(sent)
    assert 0 < stats["packets"] < len(sent) and stats["drops"] == stats["kernel_drops"]
    assert stats["queue_freezes"] >= 1
    batch = capture.batch
    # The ring kept the first packets; everything after it filled was dropped.
    assert [transport(batch.frame(i)).data for i in range(len(batch))] == sent[:stats["packets"]]
    assert any("DROPPED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@needs_capture
def test_flood_on_a_tiny_ring_accounts_for_every_packet(udp_pair):
    tx, rx = udp_pair
    port = rx.getsockname()[1]
    sent = [b"flood %05d" % i for i in range(5000)]
    with LiveCapture("lo", ports=(port,), ring_bytes=8192, block_bytes=4096) as capture:
        for payload in sent:
            tx.sendto(payload, ("127.0.0.1", port))
    stats = capture.stats
    # Drops are whatever they were; captured + dropped is every packet sent.
    assert stats["packets"] + stats["drops"] == len(sent)
    got = [transport(capture.batch.frame(i)).data for i in range(len(capture.batch))]
    indices = [int(p.split()[1]) for p in got]
    assert indices == sorted(set(indices)) and len(got) == stats["packets"]


@needs_capture
def test_interrupt_and_thread_failure_leave_nothing_open(udp_pair, tmp_path):
    tx, rx = udp_pair
    port = rx.getsockname()[1]
    open_fds = set(os.listdir("/proc/self/fd"))
    path = tmp_path / "interrupted.pcapng"
    with pytest.raises(KeyboardInterrupt):
        with LiveCapture("lo", ports=(port,), out=path):
            tx.sendto(b"before the interrupt", rx.getsockname())
            raise KeyboardInterrupt
    assert set(os.listdir("/proc/self/fd")) == open_fds
    assert not [t for t in threading.enumerate() if t.name.startswith("capture-")]
    with open_capture(path) as capture:
        assert capture.read_all().frame(0).endswith(b"before the interrupt")

    failing = LiveCapture("lo", ports=(port,))

    def broken(*_args):
        raise RuntimeError("disk on fire")

    failing._take = broken
    with pytest.raises(RuntimeError, match="disk on fire"):
        with failing:
            tx.sendto(b"x", rx.getsockname())
            failing._thread.join(timeout=2)   # it fails once the block is handed over
            assert not failing._thread.is_alive()
    assert set(os.listdir("/proc/self/fd")) == open_fds
    assert not [t for t in threading.enumerate() if t.name.startswith("capture-")]


def test_without_cap_net_raw_one_clear_error(drop_net_raw):
    code = ("from lab.capture.live import LiveCapture\n"
            "from lab.capture import CaptureError\n"
            "try:\n    LiveCapture('lo').start()\n"
            "except CaptureError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            preexec_fn=drop_net_raw)
    if result.returncode == 77:
        pytest.skip("cannot drop CAP_NET_RAW here (no CAP_SETPCAP)")
    assert result.stdout == "live capture on lo needs root (CAP_NET_RAW)\n"


@pytest.mark.parametrize("kwargs, message", [
    ({"interface": "no-such-if0"}, "no network interface named 'no-such-if0'"),
    ({"directions": "sideways"}, "directions must be one of"),
    ({"ports": range(1000, 1100)}, "too many ports"),
    ({"ports": (0,)}, "ports must be 1..65535"),
    ({"block_bytes": 3000}, "block_bytes must be a power of two"),
    ({"snaplen": 0}, "snaplen must be"),
])
def test_bad_arguments_raise_capture_error(kwargs, message):
    with pytest.raises(CaptureError, match=message):
        LiveCapture(**kwargs).start()
