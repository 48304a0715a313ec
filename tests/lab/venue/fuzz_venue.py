"""A venue as its own process, for tests/lab/venue/test_gateway_fuzz.py: two order gateways of one
protocol on 127.0.0.1 (venue 1 for a well-behaved client, venue 2 for the fuzz), each in front of its
own matching engine with a book for instrument 42, polled in turn as `lab run` polls its venues. The fuzz
gateway's connections get a small kernel send buffer, so that a client that never reads is found after
max_output_bytes of replies and not after the megabytes the kernel would otherwise hold for it.

    python fuzz_venue.py PROTOCOL MAX_OUTPUT_BYTES

It prints one JSON line, {"ports": [...]}, then answers each line it reads on stdin: `stats` with one
JSON line of every gateway's counters, its matching engine's and its rejects by reason, and the
process's VmRSS in kB; `quit` (or the end of stdin) with the same line after closing the gateways,
and it exits 0. It dies with the test (WIRELAB_PARENT_PID, engine.lifeline).
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

from engine.lifeline import die_with_parent_from_environment
from engine.protocol import md
from lab.venue.gateway import OrderGateway
from lab.venue.matching import MatchingEngine, RiskAverse

INSTRUMENT = 42
P = 10**8
BID, ASK = 100 * P, 101 * P
DEPTH = 10**9                      # shares at each side's touch: the well-behaved client never empties it
SMALL_SEND_BUFFER = 4096           # the fuzz gateway's connections' (the kernel doubles it)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def report(gateways) -> str:
    return json.dumps({"gateways": [g.stats() for g in gateways], "matching": [g.matching.stats() for g in gateways],
                       "rejects": [g.matching.rejects_by_reason() for g in gateways], "rss_kb": rss_kb()})


def main(protocol: str, max_output_bytes: int) -> int:
    die_with_parent_from_environment(signal.SIGTERM)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    gateways = []
    for venue in (1, 2):
        matching = MatchingEngine(venue, RiskAverse())
        gateways.append(OrderGateway(venue, matching, protocol=protocol, host="127.0.0.1",
                                     max_output_bytes=max_output_bytes))
        matching.on_feed(md.MdDatagram(venue, 1, INSTRUMENT, time.time_ns(), (
            md.L2Update(md.BID, md.SET, BID, DEPTH), md.L2Update(md.ASK, md.SET, ASK, DEPTH))))
    print(json.dumps({"ports": [g.address[1] for g in gateways]}), flush=True)
    pending, fuzzed = b"", None
    try:
        while not stopping:
            for gateway in gateways:
                gateway.poll(0.0005)
            conn = gateways[1]._conn
            if conn is not None and conn is not fuzzed:      # no autotuning to MBs: a slow reader shows soon
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SEND_BUFFER)
                fuzzed = conn
            if not select.select([0], [], [], 0)[0]:
                continue
            chunk = os.read(0, 4096)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip() == b"stats":
                    print(report(gateways), flush=True)
                elif line.strip() == b"quit":
                    stopping.append(True)
            if not chunk:
                stopping.append(True)
    finally:
        for gateway in gateways:
            gateway.close()
    print(report(gateways), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
