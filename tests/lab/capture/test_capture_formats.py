"""Reading files built byte by byte from the specs: the 4 pcap magics, pcapng
timestamp resolutions and offsets, direction flags, obsolete PB, skipped blocks."""
from __future__ import annotations

import struct

import dpkt
import numpy as np
import pytest
from scapy.utils import RawPcapReader

from capture_builders import block, epb, frame, idb, options, option, pb, pcap_header, pcap_record, shb, spb
from lab.capture import NO_TIMESTAMP, open_capture

# (seconds, fraction) pairs; fractions in the file's unit (us or ns).
STAMPS_US = [(1_700_000_000, 0), (1_700_000_000, 999_999), (1_700_000_001, 123_456), (0, 1)]
STAMPS_NS = [(1_700_000_000, 0), (1_700_000_000, 999_999_999), (1_700_000_001, 123_456_789), (0, 1)]


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
def test_pcap_four_magics_agree_with_scapy_and_dpkt(tmp_path, order, nanosecond):
    stamps = STAMPS_NS if nanosecond else STAMPS_US
    frames = [frame(i, 60 + 7 * i) for i in range(len(stamps))]
    snapped = frames[2][:50]  # a record cut by the snaplen: caplen 50, wire_len 74
    records = [pcap_record(order, s, f, fr) for (s, f), fr in zip(stamps, frames)]
    records[2] = pcap_record(order, *stamps[2], snapped, wire_len=len(frames[2]))
    path = write(tmp_path, "four.pcap",
                 pcap_header(order, nanosecond, snaplen=1500, linktype=1) + b"".join(records))

    with open_capture(path) as capture:
        batch = capture.read_all()
        assert capture.format == "pcap" and capture.damage == []
        [interface] = capture.interfaces
        assert (interface.linktype, interface.snaplen) == (1, 1500)
        assert interface.tsresol == ("1e-9" if nanosecond else "1e-6")
    unit = 1 if nanosecond else 1000
    assert batch.ts_ns.tolist() == [s * 10**9 + f * unit for s, f in stamps]
    assert batch.caplen.tolist() == [60, 67, 50, 81]
    assert batch.wire_len.tolist() == [60, 67, 74, 81]
    assert batch.interface.tolist() == [0] * 4 and batch.direction.tolist() == [0] * 4

    scapy_reader = RawPcapReader(str(path))
    theirs = list(scapy_reader)
    scapy_reader.close()
    assert [batch.frame(i) for i in range(4)] == [data for data, _ in theirs]
    # scapy's "usec" field holds nanoseconds for the nanosecond magic.
    assert batch.ts_ns.tolist() == [m.sec * 10**9 + m.usec * unit for _, m in theirs]
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == 1
        dpkt_packets = list(reader)
    assert [batch.frame(i) for i in range(4)] == [bytes(buf) for _, buf in dpkt_packets]
    if nanosecond:  # dpkt gives exact Decimal seconds
        assert batch.ts_ns.tolist() == [int(ts * 10**9) for ts, _ in dpkt_packets]
    else:  # dpkt gives float seconds: compare at its resolution
        assert np.allclose(batch.ts_ns / 1e9, [ts for ts, _ in dpkt_packets], rtol=0, atol=2e-6)


def test_pcap_linktype_ignores_fcs_bits_and_keeps_unknown_types(tmp_path):
    fcs_flagged = write(tmp_path, "fcs.pcap", pcap_header(linktype=1 | 0x1 << 26 | 0x4 << 28))
    unknown = write(tmp_path, "unknown.pcap",
                    pcap_header(linktype=147) + pcap_record("<", 1, 2, frame(0)))
    with open_capture(fcs_flagged) as capture:
        assert capture.interfaces[0].linktype == 1
        assert len(capture.read_all()) == 0
    # An unknown link type reads; analysis decides what it can decode.
    with open_capture(unknown) as capture:
        assert capture.interfaces[0].linktype == 147
        assert len(capture.read_all()) == 1


# (if_tsresol byte, units, expected ns from first principles)
RESOLUTIONS = [
    (0, 1_700_000_000, 1_700_000_000 * 10**9),                 # 10^0: seconds
    (3, 1_700_000_000_123, 1_700_000_000_123_000_000),          # ms
    (6, 1_700_000_000_123_456, 1_700_000_000_123_456_000),      # us (the default)
    (9, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),  # ns
    (12, 12_345_678_901_234_567, 12_345_678_901_234),  # ps: sub-ns truncated
    (0x80 | 10, 1023, 999_023_437),           # 2^-10: 1023/1024 s = 0.9990234375 s
    (0x80 | 20, (5 << 20) + 1, 5_000_000_953),  # 2^-20: 5 s + 953.67 ns, truncated
    (0x80 | 30, 3 << 29, 1_500_000_000),      # 2^-30: exactly 1.5 s
    (0x80 | 32, (1_700_000_000 << 32) + (1 << 31), 1_700_000_000_500_000_000),
    (0x80 | 40, (1 << 40) - 1, 999_999_999),  # just under 1 s
]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tsresol, units, expected", RESOLUTIONS)
def test_pcapng_tsresol_converts_exactly(tmp_path, order, tsresol, units, expected):
    content = shb(order) + idb(order, tsresol=tsresol) + epb(order, 0, units, frame(1))
    with open_capture(write(tmp_path, "r.pcapng", content)) as capture:
        batch = capture.read_all()
        text = f"2^-{tsresol & 0x7F}" if tsresol & 0x80 else f"1e-{tsresol}"
        assert capture.interfaces[0].tsresol == text
    assert int(batch.ts_ns[0]) == expected


def test_pcapng_default_resolution_is_microseconds(tmp_path):
    content = shb() + idb() + epb("<", 0, 1_700_000_000_000_001, frame(1))
    with open_capture(write(tmp_path, "d.pcapng", content)) as capture:
        assert int(capture.read_all().ts_ns[0]) == 1_700_000_000_000_001_000
        assert capture.interfaces[0].tsresol == "1e-6"


@pytest.mark.parametrize("tsoffset", [1_600_000_000, -5, 0])
def test_pcapng_tsoffset_is_added(tmp_path, tsoffset):
    content = (shb() + idb(tsresol=9, tsoffset=tsoffset)
               + epb("<", 0, 100_000_000_123, frame(1)))
    with open_capture(write(tmp_path, "o.pcapng", content)) as capture:
        assert int(capture.read_all().ts_ns[0]) == tsoffset * 10**9 + 100_000_000_123
        assert capture.interfaces[0].tsoffset_s == tsoffset


def test_pcapng_stamp_outside_int64_ns_has_no_timestamp(tmp_path):
    content = shb() + idb(tsresol=9) + epb("<", 0, (1 << 64) - 1, frame(1)) + epb("<", 0, 7, frame(2))
    with open_capture(write(tmp_path, "big.pcapng", content)) as capture:
        batch = capture.read_all()
        assert batch.ts_ns.tolist() == [NO_TIMESTAMP, 7]
        assert batch.has_ts.tolist() == [False, True]
        assert capture.missing_ts == 1


@pytest.mark.parametrize("order", ["<", ">"])
def test_direction_from_epb_flags_and_obsolete_pb(tmp_path, order):
    # bits 0-1: 0 unknown, 1 inbound, 2 outbound, 3 invalid (-> unknown);
    # other bits (reception type, FCS length) do not matter.
    flags = [None, 0, 1, 2, 3, 0x1E0 | 2, 0x1E0 | 1]
    blocks = [epb(order, 0, 1000 + i, frame(i), flags=f) for i, f in enumerate(flags)]
    blocks.append(pb(order, 0, 2000, frame(50), flags=2))
    blocks.append(pb(order, 0, 2001, frame(51)))
    content = shb(order) + idb(order, tsresol=9) + b"".join(blocks)
    with open_capture(write(tmp_path, "dir.pcapng", content)) as capture:
        batch = capture.read_all()
    assert batch.direction.tolist() == [0, 0, 1, 2, 0, 2, 1, 2, 0]
    assert batch.ts_ns.tolist() == [1000 + i for i in range(7)] + [2000, 2001]
    assert batch.frame(7) == frame(50)


def test_skips_nrb_isb_cb_dcb_and_unknown_blocks(tmp_path):
    order = "<"
    nrb = block(order, 4, struct.pack("<HH", 1, 8) + bytes([198, 18, 0, 1]) + b"a.b\0" + bytes(4))
    isb = block(order, 5, struct.pack("<III", 0, 0, 0) + options(order, option(order, 4, bytes(8))))
    cb = block(order, 0x0BAD, struct.pack("<I", 32473) + b"custom data")
    dcb = block(order, 0x40000BAD, struct.pack("<I", 32473) + b"do not copy")
    unknown = block(order, 0x12345678, b"\xff" * 20)
    content = (shb() + idb(tsresol=9) + nrb + epb(order, 0, 1, frame(1)) + isb + cb
               + spb(order, frame(2)) + dcb + unknown + epb(order, 0, 3, frame(3)) + unknown)
    with open_capture(write(tmp_path, "skip.pcapng", content)) as capture:
        batch = capture.read_all()
        assert capture.damage == []
    assert [batch.frame(i) for i in range(3)] == [frame(1), frame(2), frame(3)]
    assert batch.ts_ns.tolist() == [1, NO_TIMESTAMP, 3]


def test_spb_caplen_is_limited_by_snaplen_and_block(tmp_path):
    content = (shb() + idb(snaplen=40) + spb("<", frame(1, 40), wire_len=100)
               + spb("<", frame(2, 20), wire_len=20))
    with open_capture(write(tmp_path, "spb.pcapng", content)) as capture:
        batch = capture.read_all()
    assert batch.caplen.tolist() == [40, 20]
    assert batch.wire_len.tolist() == [100, 20]


def test_interfaces_are_numbered_across_sections(tmp_path):
    content = (shb("<") + idb("<", linktype=1, name="a") + idb("<", linktype=113, name="b")
               + epb("<", 1, 5, frame(1))
               + shb(">") + idb(">", linktype=276, name="c") + epb(">", 0, 6, frame(2)))
    with open_capture(write(tmp_path, "sections.pcapng", content)) as capture:
        batch = capture.read_all()
        assert [(i.linktype, i.name) for i in capture.interfaces] == [(1, "a"), (113, "b"), (276, "c")]
    assert batch.interface.tolist() == [1, 2]


def test_batches_stream_the_same_packets(tmp_path):
    stamps = [50, 30, 40, 10, 100, 100, 90, 200, 300, 5]  # 4 decreases: 30, 10, 90, 5
    content = pcap_header(nanosecond=True) + b"".join(
        pcap_record("<", 0, t, frame(i)) for i, t in enumerate(stamps))
    with open_capture(write(tmp_path, "s.pcap", content)) as capture:
        whole = capture.read_all()
        assert capture.non_monotonic == 4
        parts = list(capture.batches(max_packets=3))
        assert [len(p) for p in parts] == [3, 3, 3, 1]
        assert capture.non_monotonic == 4  # counted across batch boundaries too
        assert capture.position == len(content)
    for name in ("offset", "caplen", "wire_len", "ts_ns", "interface", "direction"):
        assert np.concatenate([getattr(p, name) for p in parts]).tolist() == getattr(whole, name).tolist()
    assert whole.ts_ns.tolist() == stamps


def test_non_monotonic_ignores_packets_without_stamps(tmp_path):
    content = (shb() + idb(tsresol=9) + epb("<", 0, 10, frame(1)) + spb("<", frame(2))
               + epb("<", 0, 20, frame(3)) + epb("<", 0, 15, frame(4)))
    with open_capture(write(tmp_path, "m.pcapng", content)) as capture:
        capture.read_all()
        assert (capture.non_monotonic, capture.missing_ts) == (1, 1)


def test_empty_but_valid_files_have_no_packets(tmp_path):
    for name, content in [("h.pcap", pcap_header()), ("s.pcapng", shb()), ("i.pcapng", shb() + idb())]:
        with open_capture(write(tmp_path, name, content)) as capture:
            assert len(capture.read_all()) == 0
            assert list(capture.batches()) == []
            assert capture.damage == []
