"""Seqlock queues across real processes: torn reads, sped-past, MPMC, observers."""
import ctypes
import mmap
import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest

from engine import _native
from engine.messages import ACTORS, KINDS, TIMING, timing_word
from engine.queues import Queue, QueueError, SeqlockVector

WORDS = 30
MESSAGE = np.dtype([("seq", "<u8"), ("producer", "<u8"), ("words", "<u8", (WORDS,)), ("checksum", "<u8")])
CTX = mp.get_context("fork")


def unique(tag):
    return f"test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def message(seq, producer=0):
    m = np.zeros((), MESSAGE)
    m["seq"], m["producer"] = seq, producer
    m["words"] = (np.arange(WORDS, dtype=np.uint64) * 0x9E3779B97F4A7C15 + np.uint64(seq)) & np.uint64(2**63 - 1)
    m["checksum"] = checksum(m)
    return m


def checksum(m):
    return int(np.bitwise_xor.reduce(m["words"])) ^ int(m["seq"]) ^ (int(m["producer"]) << 40)


def produce(name, count, producer, shared, start):
    q = Queue.attach(name, MESSAGE)
    p = q.producer(shared=shared)
    start.wait()
    for i in range(count):
        p.publish(message(i if not shared else i, producer))
    q.close()


def consume(name, expect, result, start, read="poll"):
    q = Queue.attach(name, MESSAGE)
    c = q.consumer(from_start=True)
    start.wait()
    accepted, torn, seqs = 0, 0, []
    idle = 0
    while accepted + c.missed < expect and idle < 5_000_000:
        if read == "poll":
            m = c.poll()
        else:                                                 # the C spin: up to 100 looks per call
            raw = c.wait_bytes(100)
            m = None if raw is None else np.frombuffer(raw, MESSAGE)[0]
        if m is None:
            idle += 1
            continue
        idle = 0
        accepted += 1
        if checksum(m) != int(m["checksum"]):
            torn += 1
        seqs.append((int(m["producer"]), int(m["seq"])))
    result.put({"accepted": accepted, "torn": torn, "missed": c.missed, "seqs": seqs})
    q.close()


@pytest.mark.parametrize("read", ["poll", "wait_bytes"])
def test_no_torn_read_is_ever_accepted_and_sped_past_consumers_recover(read):
    name = unique("torn")
    total = 60_000
    with Queue(name, MESSAGE, capacity=64):                 # small ring: consumers get sped past
        start, result = CTX.Event(), CTX.Queue()
        consumers = [CTX.Process(target=consume, args=(name, total, result, start, read)) for _ in range(2)]
        producer = CTX.Process(target=produce, args=(name, total, 0, False, start))
        for p in consumers + [producer]:
            p.start()
        start.set()
        reports = [result.get(timeout=120) for _ in consumers]
        for p in consumers + [producer]:
            p.join(timeout=30)
            assert p.exitcode == 0
    for r in reports:
        assert r["torn"] == 0
        assert r["accepted"] + r["missed"] == total
        seqs = [s for _, s in r["seqs"]]
        assert seqs == sorted(set(seqs))                      # in order, no duplicates
        assert r["accepted"] > 0


def test_sped_past_is_detected_and_recovered():
    name = unique("lap")
    with Queue(name, MESSAGE, capacity=16) as q:
        c = q.consumer()
        p = q.producer()
        for i in range(100):
            p.publish(message(i))
        got = []
        while (m := c.poll()) is not None or not got:
            if m is not None:
                got.append(int(m["seq"]))
        # the ring holds 84..99; recovery skips to 85, leaving the oldest slot to the producer
        assert c.missed == 85
        assert got == list(range(85, 100))


def test_wait_bytes_detects_and_recovers_from_being_sped_past():
    name = unique("lapw")
    with Queue(name, MESSAGE, capacity=16) as q:
        c = q.consumer()
        p = q.producer()
        for i in range(100):
            p.publish(message(i))
        # one call recovers (85 missed, as poll does) and goes on waiting: it returns 85
        got = [int(np.frombuffer(c.wait_bytes(1000), MESSAGE)[0]["seq"])]
        assert c.missed == 85
        while (raw := c.wait_bytes(1000)) is not None:
            got.append(int(np.frombuffer(raw, MESSAGE)[0]["seq"]))
        assert got == list(range(85, 100))
        assert c.seq == 100 and c.wait_bytes(0) is None
        p.publish(message(100))
        assert int(np.frombuffer(c.wait_bytes(0), MESSAGE)[0]["seq"]) == 100


def test_publish_takes_bytes_buffers_and_records_and_checks_the_size():
    name = unique("pub")
    with Queue(name, MESSAGE, capacity=8) as q:
        c = q.consumer()
        p = q.producer()
        raw = message(7).tobytes()
        assert [p.publish(raw), p.publish(bytearray(raw)), p.publish(memoryview(raw)), p.publish(message(7))] \
            == [0, 1, 2, 3]
        assert [c.poll_bytes() for _ in range(4)] == [raw] * 4
        assert c.poll_bytes() is None and (p.seq, q.head(), c.seq) == (4, 4, 4)
        with pytest.raises(ValueError, match="message is 3 bytes"):
            p.publish(b"abc")
        assert q.head() == 4


def test_publish_words_writes_what_the_timing_layout_packs():
    timing = TIMING.struct
    with Queue(unique("words"), TIMING.dtype, capacity=8) as q:
        c, p = q.consumer(), q.producer()
        word = timing_word("overseer", "order_request")
        assert p.publish_words(word, 2**64 - 1, 12345, 6) == 0
        record = np.frombuffer(c.poll_bytes(), TIMING.dtype)[0]
        assert (record["publisher"], record["kind"]) == (ACTORS["overseer"], KINDS["order_request"])
        assert bytes(record) == timing.pack(ACTORS["overseer"], KINDS["order_request"], 2**64 - 1, 12345, 6)
        with pytest.raises(ValueError, match="message is 24 bytes"):
            p.publish_words(word, 1, 2)
        with pytest.raises(OverflowError):
            p.publish_words(word, -1, 2, 3)
        with pytest.raises(TypeError):
            p.publish_words(*range(9))
        assert q.head() == 1 and c.poll_bytes() is None


def test_a_shared_producer_counts_a_slot_that_a_later_lap_took():
    name = unique("lapped")
    with Queue(name, MESSAGE, capacity=4) as q:
        p = q.producer(shared=True)
        raw = message(4).tobytes()
        assert _native.seqlock_write(q.slot_address(4), 1, raw)      # message 4 (lap 1) is in slot 0
        assert p.publish(message(0)) == 0                             # message 0 finds it there
        assert p.lapped == 1 and q.head() == 1
        assert q.consumer(from_start=True).poll_bytes() is None       # slot 0 holds lap 1: sped past


def store_tsc_after(address, ticks):
    _native.spin_ticks(ticks)
    _native.store_tsc(address)


def test_floor_probe_sees_another_process_store_its_tsc():
    line = mmap.mmap(-1, mmap.PAGESIZE)                      # anonymous and shared across fork
    pin = ctypes.c_char.from_buffer(line)
    address = ctypes.addressof(pin)
    assert _native.spin_until_changed(address, 0, 10) is None
    before = _native.rdtscp()
    _native.spin_ticks(1000)
    assert _native.rdtscp() - before >= 1000
    proc = CTX.Process(target=store_tsc_after, args=(address, 1000))
    proc.start()
    for _ in range(1000):
        if (got := _native.spin_until_changed(address, 0, 1 << 20)) is not None:
            break
    proc.join(timeout=30)
    stored, seen = got
    assert seen >= stored > 0 and _native.load_acquire(address) == stored
    del pin
    line.close()


def test_mpmc_under_contention_loses_and_duplicates_nothing():
    name = unique("mpmc")
    per_producer, producers = 20_000, 2
    with Queue(name, MESSAGE, capacity=1 << 16) as q:       # large enough that no producer is lapped
        start, result = CTX.Event(), CTX.Queue()
        consumer = CTX.Process(target=consume, args=(name, per_producer * producers, result, start))
        procs = [CTX.Process(target=produce, args=(name, per_producer, k + 1, True, start))
                 for k in range(producers)]
        for p in [consumer] + procs:
            p.start()
        start.set()
        report = result.get(timeout=120)
        for p in [consumer] + procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert q.head() == per_producer * producers
    assert report["missed"] == 0 and report["torn"] == 0
    seen = sorted(report["seqs"])
    assert seen == [(k + 1, i) for k in range(producers) for i in range(per_producer)]


def observe(name, result):
    try:
        q = Queue.attach(name, MESSAGE)
        c = q.consumer(from_start=True)
        got = []
        while (m := c.poll()) is not None:
            got.append(int(m["seq"]))
        q.close()
        result.put(got)
    except QueueError as exc:
        result.put(str(exc))


def test_observers_attach_and_detach_freely():
    name = unique("obs")
    result = CTX.Queue()
    q = Queue(name, MESSAGE, capacity=64)
    p = q.producer()
    for round_ in range(3):
        p.publish(message(round_))
        proc = CTX.Process(target=observe, args=(name, result))
        proc.start()
        assert result.get(timeout=30) == list(range(round_ + 1))
        proc.join(timeout=10)
    q.close()                                                # the creator removes the segment
    proc = CTX.Process(target=observe, args=(name, result))
    proc.start()
    assert "no shared memory" in result.get(timeout=30)
    proc.join(timeout=10)
    assert not os.path.exists(f"/dev/shm/wirelab-{name}")


def test_segments_are_owner_only_and_layouts_are_checked():
    name = unique("perm")
    with Queue(name, MESSAGE, capacity=8):
        assert os.stat(f"/dev/shm/wirelab-{name}").st_mode & 0o077 == 0
        with pytest.raises(QueueError):
            Queue.attach(name, np.dtype([("x", "<u8")]))
        with pytest.raises(QueueError):
            Queue(name, MESSAGE, capacity=8)
    with pytest.raises(QueueError):
        Queue(unique("bad"), MESSAGE, capacity=12)


def write_vector(name, rounds, start):
    v = SeqlockVector.attach(name, MESSAGE)
    start.wait()
    for i in range(rounds):
        v.write(i % 4, message(i))
    v.close()


def test_seqlock_vector_latest_value_never_torn():
    name = unique("vec")
    rounds = 50_000
    with SeqlockVector(name, MESSAGE, capacity=4) as v:
        assert v.read(0) is None
        start = CTX.Event()
        writer = CTX.Process(target=write_vector, args=(name, rounds, start))
        writer.start()
        start.set()
        reads = 0
        while writer.is_alive() or reads == 0:
            got = v.read(reads % 4)
            if got is not None:
                _, m = got
                assert checksum(m) == int(m["checksum"])
            reads += 1
        writer.join(timeout=30)
        assert writer.exitcode == 0
        versions = [v.read(k)[0] for k in range(4)]
        with pytest.raises(ValueError, match="value is 3 bytes"):
            v.write(0, b"abc")
        assert versions == [rounds // 4] * 4
        assert [int(v.read(k)[1]["seq"]) for k in range(4)] == [rounds - 4 + k for k in range(4)]
