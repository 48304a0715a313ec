"""The writers: read back by lab.capture, dpkt and tshark, stamps equal to the nanosecond."""
from __future__ import annotations

import os
import stat

import dpkt
import numpy as np
import pytest

from capture_builders import frame
from lab.capture import CaptureError, Interface, PcapngWriter, PcapWriter, open_capture

# Stamps with every ns digit significant, out of order on purpose (a writer keeps order).
STAMPS = [1_700_000_000_123_456_789, 1_700_000_000_123_456_790, 1_700_000_000_999_999_999,
          1_700_000_001_000_000_001, 1_600_000_000_000_000_007]
FRAMES = [frame(i, 60 + 33 * i) for i in range(len(STAMPS))]
HOST_TAP = Interface(linktype=1, tsresol="1e-9", snaplen=0, name="host-nic",
                     description="tap at the host NIC; hardware-style stamps (first bit)")
EXCHANGE_TAP = Interface(linktype=1, tsresol="1e-9", snaplen=100, name="exchange",
                         description="tap at the exchange NIC; hardware-style stamps (first bit)",
                         tsoffset_s=1_500_000_000)


def epoch_ns(text: str) -> int:
    seconds, fraction = text.split(".")
    assert len(fraction) == 9  # tshark prints all 9 digits for ns files
    return int(seconds) * 10**9 + int(fraction)


def write_pcapng(path):
    with PcapngWriter(path, [HOST_TAP, EXCHANGE_TAP]) as writer:
        writer.write(0, STAMPS[0], FRAMES[0], direction=1)
        writer.write_batch([1, 0, 1, 0], STAMPS[1:], FRAMES[1:], direction=[2, 0, 1, 2])
    return path


def test_pcap_writer_round_trip_and_dpkt(tmp_path):
    path = tmp_path / "w.pcap"
    with PcapWriter(path, linktype=1, snaplen=100) as writer:
        writer.write(STAMPS[0], FRAMES[0])
        writer.write_batch(np.array(STAMPS[1:]), FRAMES[1:])
    with open_capture(path) as capture:
        batch = capture.read_all()
        assert capture.interfaces[0].tsresol == "1e-9" and capture.interfaces[0].snaplen == 100
        assert capture.non_monotonic == 1
    assert batch.ts_ns.tolist() == STAMPS
    assert [batch.frame(i) for i in range(5)] == [f[:100] for f in FRAMES]
    assert batch.wire_len.tolist() == [len(f) for f in FRAMES]
    with open(path, "rb") as f:
        assert [int(ts * 10**9) for ts, _ in dpkt.pcap.Reader(f)] == STAMPS  # Decimal for ns files


def test_pcap_writer_tshark_reads_stamps_to_the_ns(tmp_path, tshark_fields):
    path = tmp_path / "t.pcap"
    with PcapWriter(path, snaplen=100) as writer:
        writer.write_batch(STAMPS, FRAMES)
    rows = tshark_fields(path, "frame.time_epoch", "frame.cap_len", "frame.len")
    assert [epoch_ns(t) for t, _, _ in rows] == STAMPS
    assert [(int(c), int(w)) for _, c, w in rows] == [(min(len(f), 100), len(f)) for f in FRAMES]


def test_pcapng_writer_round_trip(tmp_path):
    path = write_pcapng(tmp_path / "w.pcapng")
    with open_capture(path) as capture:
        batch = capture.read_all()
        assert capture.interfaces == [HOST_TAP, EXCHANGE_TAP]
    assert batch.ts_ns.tolist() == STAMPS
    assert batch.interface.tolist() == [0, 1, 0, 1, 0]
    assert batch.direction.tolist() == [1, 2, 0, 1, 2]
    snaplens = [0, 100, 0, 100, 0]
    assert [batch.frame(i) for i in range(5)] == [f[:s] if s else f for f, s in zip(FRAMES, snaplens)]
    assert batch.wire_len.tolist() == [len(f) for f in FRAMES]


def test_pcapng_writer_tshark_reads_stamps_names_and_directions(tmp_path, tshark_fields):
    path = write_pcapng(tmp_path / "t.pcapng")
    rows = tshark_fields(path, "frame.time_epoch", "frame.interface_name",
                         "frame.interface_description", "frame.packet_flags_direction",
                         "frame.cap_len", "frame.len")
    assert [epoch_ns(row[0]) for row in rows] == STAMPS  # if_tsoffset applied by tshark too
    taps = [HOST_TAP, EXCHANGE_TAP, HOST_TAP, EXCHANGE_TAP, HOST_TAP]
    assert [(row[1], row[2]) for row in rows] == [(t.name, t.description) for t in taps]
    assert [int(row[3], 16) if row[3] else 0 for row in rows] == [1, 2, 0, 1, 2]
    snaplens = [t.snaplen or 1 << 32 for t in taps]
    assert [int(row[4]) for row in rows] == [min(len(f), s) for f, s in zip(FRAMES, snaplens)]
    assert [int(row[5]) for row in rows] == [len(f) for f in FRAMES]


def test_rewriting_a_read_batch_is_lossless(tmp_path):
    source = write_pcapng(tmp_path / "a.pcapng")
    with open_capture(source) as capture:
        batch = capture.read_all()
        interfaces = capture.interfaces
        with PcapngWriter(tmp_path / "b.pcapng", interfaces) as writer:
            writer.write_batch(batch.interface, batch.ts_ns, batch, batch.direction)
    with open_capture(tmp_path / "b.pcapng") as again:
        copy = again.read_all()
        for name in ("caplen", "wire_len", "ts_ns", "interface", "direction"):
            assert getattr(copy, name).tolist() == getattr(batch, name).tolist()
        assert [copy.frame(i) for i in range(len(copy))] == [batch.frame(i) for i in range(len(batch))]
    assert (tmp_path / "b.pcapng").read_bytes() == source.read_bytes()


def test_empty_batch_and_empty_frames(tmp_path, tshark_fields):
    path = tmp_path / "e.pcapng"
    with PcapngWriter(path, [HOST_TAP]) as writer:
        writer.write_batch(0, np.array([], np.int64), [])
        writer.write_batch(0, [5, 6], [b"", b"x"])
    with open_capture(path) as capture:
        batch = capture.read_all()
        assert batch.caplen.tolist() == [0, 1] and batch.ts_ns.tolist() == [5, 6]
    tshark_fields(path, "frame.len")


def test_files_are_owner_only_even_if_they_existed(tmp_path):
    makers = [("a.pcap", lambda p: PcapWriter(p)), ("a.pcapng", lambda p: PcapngWriter(p, [HOST_TAP]))]
    for name, make in makers:
        path = tmp_path / name
        path.write_bytes(b"old")
        os.chmod(path, 0o644)
        make(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("make, write", [
    (lambda p: PcapWriter(p), lambda w: w.write(-1, b"x")),
    (lambda p: PcapWriter(p), lambda w: w.write((1 << 32) * 10**9, b"x")),
    (lambda p: PcapngWriter(p, [HOST_TAP]), lambda w: w.write(1, 5, b"x")),
    (lambda p: PcapngWriter(p, [HOST_TAP]), lambda w: w.write(0, 5, b"x", direction=3)),
    (lambda p: PcapngWriter(p, [EXCHANGE_TAP]), lambda w: w.write(0, 5, b"x")),  # before if_tsoffset
])
def test_unwritable_packets_are_capture_errors(tmp_path, make, write):
    with make(tmp_path / "x") as writer, pytest.raises(CaptureError):
        write(writer)


def test_pcapng_needs_an_interface(tmp_path):
    with pytest.raises(CaptureError):
        PcapngWriter(tmp_path / "none.pcapng", [])
