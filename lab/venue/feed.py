"""The venue's feed publisher: each MD datagram onto loopback at its instant, with its kernel TX stamp.

One connected UDP socket per venue, with software TX stamps (engine.net.enable_tx_stamps).
For UDP, SOF_TIMESTAMPING_OPT_ID keys each stamp by a per-socket counter of datagrams the
kernel took, from 0; tests/lab/venue/test_feed.py checks that on this kernel.

A send refused with ECONNREFUSED (an ICMP port unreachable from an earlier datagram: nobody
was bound yet) did not send this datagram: it has no TX stamp and does not advance the
OPT_ID counter (seen by experiment on Linux 6.x). It is counted as `refused`.

Waiting for an instant: sleep until SLEEP_MARGIN_NS before it, then spin on time.time_ns();
while more than IDLE_MIN_NS remain, the caller's idle(budget_s) hook runs instead (the
venue gateway's poll), so one loop serves the feed and the order gateway.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np

from engine.net import enable_tx_stamps, tx_stamps
from engine.protocol.registry import DEFAULT_MD, md_protocol
from lab.percentiles import PERCENTILES, nearest_rank
from lab.venue.market import Feed, FeedError

SLEEP_MARGIN_NS = 200_000        # time.sleep() may overshoot: stop sleeping this long before the instant
IDLE_MIN_NS = 300_000            # call idle() only while more than this remains
COLLECT_EVERY = 64               # drain the error queues after this many sends (they hold ~ rcvbuf bytes)
ERRQUEUE_BYTES = 1 << 22
PROGRESS_EVERY, PROGRESS_NS = 1000, 250_000_000
LAST_STAMPS_WAIT_NS = 50_000_000  # after the last send, how long to wait for missing TX stamps


@dataclass
class Delivery:
    """What publish() did, per datagram (arrays in feed order) and in total."""
    intended_ns: np.ndarray      # int64: when the datagram was due (deliver_at_ns)
    app_ns: np.ndarray           # int64: time.time_ns() just before its send()
    kernel_tx_ns: np.ndarray     # int64: the kernel's TX stamp; 0 when none came back
    seq: np.ndarray              # uint64
    venue: np.ndarray            # uint16
    payload_bytes: np.ndarray    # int64
    refused: int                 # sends refused with ECONNREFUSED (not sent; kernel_tx_ns 0)
    missing_tx_stamps: int       # datagrams with kernel_tx_ns 0, the refused ones included

    @property
    def late_ns(self) -> dict:
        """p50, p99 and max of kernel_tx_ns - intended_ns over the stamped datagrams (None if none)."""
        stamped = self.kernel_tx_ns != 0
        late = np.sort(self.kernel_tx_ns[stamped] - self.intended_ns[stamped])
        if not late.size:
            return {"p50": None, "p99": None, "max": None}
        return {"p50": nearest_rank(late, PERCENTILES["p50"]), "p99": nearest_rank(late, PERCENTILES["p99"]),
                "max": int(late[-1])}

    def summary(self) -> dict:
        """The totals, for a report or JSON."""
        return {"datagrams": int(self.intended_ns.size), "refused": self.refused,
                "missing_tx_stamps": self.missing_tx_stamps, "late_ns": self.late_ns}


class FeedPublisher:
    """UDP senders to the engine's feed sockets, one per venue: {venue: (host, port)}. Each
    datagram gets the sender's clock (the MD protocol's stamp) as it goes."""

    def __init__(self, destinations: dict[int, tuple[str, int]], protocol: str = DEFAULT_MD):
        self.protocol = md_protocol(protocol)
        self.sockets: dict[int, socket.socket] = {}
        self.sent: dict[int, list[int]] = {}          # venue -> index of each datagram the kernel took (-1: done)
        self.kernel_tx: dict[int, int] = {}           # send index -> kernel TX ns
        self.refused = 0
        try:
            for venue, address in destinations.items():
                sock = self.sockets[venue] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ERRQUEUE_BYTES)
                enable_tx_stamps(sock)                # before the first send: ids count from 0
                sock.connect(address)
                self.sent[venue] = []
        except BaseException:
            self.close()
            raise

    def send(self, index: int, venue: int, payload) -> int:
        """Send one datagram now; returns time.time_ns() taken just before the send."""
        sock = self.sockets.get(venue)
        if sock is None:
            raise FeedError(f"no destination for venue {venue}")
        now = time.time_ns()
        try:
            sock.send(payload)
        except ConnectionRefusedError:
            self.refused += 1
            return now
        self.sent[venue].append(index)
        return now

    def collect(self) -> int:
        """Drain every socket's error queue into the TX stamps; returns how many arrived."""
        got = 0
        for venue, sock in self.sockets.items():
            sent = self.sent[venue]
            for key, stamp in tx_stamps(sock):
                if key < len(sent) and sent[key] >= 0:
                    self.kernel_tx[sent[key]] = stamp
                    got += 1
        return got

    def publish(self, feed: Feed, deliver_at_ns: np.ndarray, idle=None, progress=None, sent=None) -> Delivery:
        """Send datagram i at CLOCK_REALTIME deliver_at_ns[i], its send_ts_ns set to the send instant.

        Hooks: idle(budget_s) while waiting (see the module doc); sent(i) right after datagram i
        went out; progress(done, total) every PROGRESS_EVERY datagrams or PROGRESS_NS.
        """
        deliver_at = np.asarray(deliver_at_ns, dtype=np.int64)
        total = len(feed)
        if deliver_at.shape != (total,):
            raise FeedError(f"{deliver_at.size} delivery instants for {total} datagrams")
        unknown = set(np.unique(feed.venue).tolist()) - set(self.sockets)
        if unknown:
            raise FeedError(f"no destination for venue(s) {sorted(unknown)}")
        self._forget_earlier_sends()
        app = np.zeros(total, np.int64)
        venues = feed.venue.tolist()
        next_progress = time.monotonic_ns() + PROGRESS_NS
        for i, due in enumerate(deliver_at.tolist()):
            self._wait_until(due, idle)
            payload = bytearray(feed.payloads[i])
            now = time.time_ns()
            self.protocol.stamp(payload, send_ts_ns=now)
            self.send(i, venues[i], payload)
            app[i] = now
            if sent is not None:
                sent(i)
            if i % COLLECT_EVERY == COLLECT_EVERY - 1:
                self.collect()
            if progress is not None and (i % PROGRESS_EVERY == PROGRESS_EVERY - 1
                                         or time.monotonic_ns() >= next_progress):
                progress(i + 1, total)
                next_progress = time.monotonic_ns() + PROGRESS_NS
        self._collect_last()
        kernel_tx = np.zeros(total, np.int64)
        if self.kernel_tx:
            kernel_tx[np.fromiter(self.kernel_tx, np.int64)] = np.fromiter(self.kernel_tx.values(), np.int64)
        return Delivery(intended_ns=deliver_at, app_ns=app, kernel_tx_ns=kernel_tx, seq=feed.seq.copy(),
                        venue=feed.venue.copy(), payload_bytes=np.array([len(p) for p in feed.payloads], np.int64),
                        refused=self.refused, missing_tx_stamps=int(np.count_nonzero(kernel_tx == 0)))

    def _wait_until(self, due: int, idle) -> None:
        while True:
            remaining = due - time.time_ns()
            if remaining <= 0:
                return
            if remaining > IDLE_MIN_NS:
                self.collect()
                if idle is not None:
                    idle((remaining - IDLE_MIN_NS) / 1e9)
                    continue
            if remaining > SLEEP_MARGIN_NS:
                time.sleep((remaining - SLEEP_MARGIN_NS) / 1e9)

    def _forget_earlier_sends(self) -> None:
        """Stamps of earlier sends must not land on this publish's indices."""
        self._collect_last()
        self.kernel_tx, self.refused = {}, 0
        for sent in self.sent.values():
            sent[:] = [-1] * len(sent)

    def _collect_last(self) -> None:
        """Collect until every datagram the kernel took has its stamp, or a short while passed."""
        expected = sum(index >= 0 for sent in self.sent.values() for index in sent)
        give_up = time.monotonic_ns() + LAST_STAMPS_WAIT_NS
        self.collect()
        while len(self.kernel_tx) < expected and time.monotonic_ns() < give_up:
            time.sleep(0.001)
            self.collect()

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}

    def __enter__(self) -> "FeedPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

