"""Cross-process one-way latency and throughput: seqlock queue vs multiprocessing.Queue and Pipe.

    python benchmarks/bench_queues.py --json [--messages N]

Latency: the producer stamps each message with rdtscp just before publishing;
the consumer, spinning in another process, stamps it on receipt. Messages are
paced (a sleep of --gap-us between them) so each measures an idle hop, not a backlog.
Throughput: one producer publishes as fast as it can; the consumer counts what
it received (the seqlock queue never blocks its producer, so it also reports
messages the consumer lost by being sped past).
All three transports run in this one invocation; trust the ratios and medians.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import time

import numpy as np

from engine.clock import calibrate, tsc
from engine.queues import Queue

STAMP = struct.Struct("<QQ")                 # sequence, TSC at publish
PAYLOAD = 64
MESSAGE = np.dtype([("seq", "<u8"), ("tsc", "<u8"), ("pad", "u1", (PAYLOAD - 16,))])
CTX = mp.get_context("fork")


def pad(raw: bytes) -> bytes:
    return raw + bytes(PAYLOAD - len(raw))


def pause(gap_s: float) -> None:
    """Sleep between paced messages: a busy-wait would hold the GIL and starve
    multiprocessing.Queue's feeder thread, and take a core from the consumer."""
    time.sleep(gap_s)


# -- seqlock queue ------------------------------------------------------------------------

def seqlock_consumer(name, n, out, ready):
    q = Queue.attach(name, MESSAGE)
    c = q.consumer(from_start=True)
    ready.set()
    stamps = np.zeros(n, np.int64)
    got = 0
    while got < n:
        raw = c.poll_bytes()
        if raw is None:
            continue
        now = tsc()
        seq, sent = STAMP.unpack_from(raw)
        stamps[got] = now - sent
        got += 1
    out.put((stamps.tolist(), c.missed))
    q.close()


def seqlock_throughput_consumer(name, n, out, ready):
    q = Queue.attach(name, MESSAGE)
    c = q.consumer(from_start=True)
    ready.set()
    got = 0
    while got + c.missed < n:
        if c.poll_bytes() is not None:
            got += 1
    out.put((got, c.missed))
    q.close()


def bench_seqlock(n, gap_s, throughput_n):
    name = f"bench-{os.getpid()}"
    with Queue(name, MESSAGE, capacity=1 << 12) as q:
        p = q.producer()
        out, ready = CTX.Queue(), CTX.Event()
        proc = CTX.Process(target=seqlock_consumer, args=(name, n, out, ready))
        proc.start()
        ready.wait()
        for i in range(n):
            pause(gap_s)
            p.publish(pad(STAMP.pack(i, tsc())))
        deltas, missed = out.get(timeout=120)
        proc.join()
    name2 = f"bench-tp-{os.getpid()}"
    with Queue(name2, MESSAGE, capacity=1 << 16) as q:
        p = q.producer()
        out, ready = CTX.Queue(), CTX.Event()
        proc = CTX.Process(target=seqlock_throughput_consumer, args=(name2, throughput_n, out, ready))
        proc.start()
        ready.wait()
        message = pad(STAMP.pack(0, 0))
        t0 = time.perf_counter()
        for _ in range(throughput_n):
            p.publish(message)
        elapsed = time.perf_counter() - t0
        received, lost = out.get(timeout=120)
        proc.join()
    return deltas, throughput_n / elapsed, {"received": received, "sped_past_lost": lost}


# -- multiprocessing.Queue and Pipe --------------------------------------------------------

def mpq_consumer(q, n, out, ready):
    ready.set()
    deltas = []
    for _ in range(n):
        raw = q.get()
        now = tsc()
        deltas.append(now - STAMP.unpack_from(raw)[1])
    out.put(deltas)


def pipe_consumer(conn, n, out, ready):
    ready.set()
    deltas = []
    for _ in range(n):
        raw = conn.recv_bytes()
        now = tsc()
        deltas.append(now - STAMP.unpack_from(raw)[1])
    out.put(deltas)


def drain_consumer(kind, chan, n, out, ready):
    ready.set()
    for _ in range(n):
        chan.get() if kind == "queue" else chan.recv_bytes()
    out.put(n)


def bench_mp(kind, n, gap_s, throughput_n):
    out, ready = CTX.Queue(), CTX.Event()
    if kind == "queue":
        chan = CTX.Queue()
        send = chan.put
        proc = CTX.Process(target=mpq_consumer, args=(chan, n, out, ready))
    else:
        recv_end, chan = CTX.Pipe(duplex=False)
        send = chan.send_bytes
        proc = CTX.Process(target=pipe_consumer, args=(recv_end, n, out, ready))
    proc.start()
    ready.wait()
    for i in range(n):
        pause(gap_s)
        send(pad(STAMP.pack(i, tsc())))
    deltas = out.get(timeout=120)
    proc.join()
    if kind == "queue":
        chan = CTX.Queue()
        send = chan.put
        drain_arg = chan
    else:
        drain_arg, chan = CTX.Pipe(duplex=False)
        send = chan.send_bytes
    ready = CTX.Event()
    proc = CTX.Process(target=drain_consumer, args=(kind, drain_arg, throughput_n, out, ready))
    proc.start()
    ready.wait()
    message = pad(STAMP.pack(0, 0))
    t0 = time.perf_counter()
    for _ in range(throughput_n):
        send(message)
    out.get(timeout=300)                   # delivered: a Queue's feeder thread may lag its put()
    elapsed = time.perf_counter() - t0
    proc.join()
    return deltas, throughput_n / elapsed, {}


def summarise(deltas, rate, extra, hz):
    ns = np.array(deltas, dtype=np.int64) * 10**9 // hz
    return {"p50_ns": int(np.percentile(ns, 50)), "p99_ns": int(np.percentile(ns, 99)),
            "min_ns": int(ns.min()), "msgs_per_s": round(rate), **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000, help="latency samples per transport")
    ap.add_argument("--throughput-messages", type=int, default=1_000_000)
    ap.add_argument("--gap-us", type=float, default=200.0, help="pause between latency samples")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    hz = calibrate(duration_s=0.1, samples=200).frequency_hz
    gap = args.gap_us / 1e6
    results = {"seqlock": summarise(*bench_seqlock(args.messages, gap, args.throughput_messages), hz=hz)}
    for key, kind in (("mp_queue", "queue"), ("mp_pipe", "pipe")):
        results[key] = summarise(*bench_mp(kind, args.messages, gap, args.throughput_messages // 5), hz=hz)
    results["speedup_p50_vs_mp_queue"] = round(results["mp_queue"]["p50_ns"] / max(1, results["seqlock"]["p50_ns"]), 1)
    results["speedup_p50_vs_mp_pipe"] = round(results["mp_pipe"]["p50_ns"] / max(1, results["seqlock"]["p50_ns"]), 1)
    results["targets"] = {"seqlock_p50_ns": 1000, "speedup_p50_vs_mp_queue": 10, "seqlock_msgs_per_s": 1_000_000}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key in ("seqlock", "mp_queue", "mp_pipe"):
            r = results[key]
            print(f"{key:9s} p50 {r['p50_ns']:>7} ns  p99 {r['p99_ns']:>8} ns  {r['msgs_per_s'] / 1e6:6.2f} M msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
