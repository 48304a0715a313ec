"""`lab synth`: every frame parses with scapy, checksums hold, and the truth CSV agrees
with the frames as an independent reader sees them (struct for the file, scapy for the
packets, the wire-format codecs for the payloads, wire time from bits / rate)."""
import csv
import itertools
import shutil
import stat
import struct
import subprocess
from decimal import Decimal

import numpy as np
import pytest
from scapy.all import IP, TCP, UDP, Ether, Padding, raw

from engine.protocol import fix
from engine.protocol.md import decode_md
from engine.protocol.orders import (
    NEW_ORDER_PREFIX_BYTES,
    NEW_ORDER_SIZE,
    decode_new_orders,
    decode_order,
    frame_order_stream,
)
from lab.cli import main
from lab.synth import SynthConfig, synthesize

TEN_GBPS = 10_000_000_000
TRIGGERS = 120


def wire_time_ns(frame_len: int, rate_bps: int = TEN_GBPS) -> int:
    """First bit to last bit: preamble+SFD 8 B, frame + FCS padded to 64 B, rounded up to a ns."""
    bits = (8 + max(frame_len + 4, 64)) * 8
    return -(-bits * 10**9 // rate_bps)


def read_records(path) -> list[tuple[int, bytes, int]]:
    """(stamp_ns, frame, direction) per record, read with struct: pcap (ns magic) or pcapng."""
    data = path.read_bytes()
    if data[:4] == struct.pack("<I", 0xA1B23C4D):
        records, at = [], 24
        while at < len(data):
            sec, frac, caplen, _ = struct.unpack_from("<IIII", data, at)
            records.append((sec * 10**9 + frac, data[at + 16:at + 16 + caplen], 0))
            at += 16 + caplen
        return records
    records, at = [], 0
    while at < len(data):
        block_type, length = struct.unpack_from("<II", data, at)
        if block_type == 6:
            _, high, low, caplen, _ = struct.unpack_from("<IIIII", data, at + 8)
            options = data[at + 28 + (caplen + 3) // 4 * 4:at + length - 4]
            direction = 0
            if options[:4] == struct.pack("<HH", 2, 4):
                direction = struct.unpack_from("<I", options, 4)[0] & 3
            records.append(((high << 32 | low), data[at + 28:at + 28 + caplen], direction))
        at += length
    return records


def pcapng_interface_options(path) -> dict[int, bytes]:
    data = path.read_bytes()
    at = struct.unpack_from("<I", data, 4)[0]          # skip the SHB
    assert struct.unpack_from("<I", data, at)[0] == 1  # the one IDB
    length = struct.unpack_from("<I", data, at + 4)[0]
    options, position = {}, at + 16
    while position < at + length - 4:
        code, size = struct.unpack_from("<HH", data, position)
        if code == 0:
            break
        options[code] = data[position + 4:position + 4 + size]
        position += 4 + (size + 3) // 4 * 4
    return options


def checksums_hold(packet) -> bool:
    """scapy recomputes IP and L4 checksums from scratch; they must equal the file's."""
    rebuilt = packet.copy()
    del rebuilt[IP].chksum
    layer = TCP if TCP in rebuilt else UDP
    del rebuilt[layer].chksum
    rebuilt = Ether(raw(rebuilt))
    return rebuilt[IP].chksum == packet[IP].chksum and rebuilt[layer].chksum == packet[layer].chksum


def synth(tmp_path, *flags, name="cap"):
    out, truth = tmp_path / name, tmp_path / f"{name}.csv"
    assert main(["synth", "--out", str(out), "--truth", str(truth), "--json", *map(str, flags)]) == 0
    with open(truth) as f:
        rows = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return out, rows


def reassemble(segments: list[tuple[int, bytes]]) -> bytes:
    """A TCP byte stream from (relative seq, payload) pairs, any order, duplicates allowed."""
    size = max(seq + len(payload) for seq, payload in segments)
    stream = bytearray(size)
    for seq, payload in segments:
        stream[seq:seq + len(payload)] = payload
    return bytes(stream)


@pytest.fixture(scope="module", params=[("pcap", "hardware"), ("pcap", "software"),
                                        ("pcapng", "hardware"), ("pcapng", "software")],
                ids=lambda p: "-".join(p))
def capture(request, tmp_path_factory):
    file_format, convention = request.param
    tmp = tmp_path_factory.mktemp(f"{file_format}-{convention}")
    out, truth = synth(tmp, "--triggers", TRIGGERS, "--seed", 11, "--format", file_format,
                       "--convention", convention)
    records = read_records(out)
    packets = [Ether(frame) for _, frame, _ in records]
    return {"format": file_format, "convention": convention, "path": out, "truth": truth,
            "records": records, "packets": packets}


def first_bit(stamp: int, frame: bytes, inbound: bool, convention: str) -> int:
    """Undo the convention: software stamps inbound frames at their last bit."""
    return stamp - wire_time_ns(len(frame)) if convention == "software" and inbound else stamp


def test_every_frame_parses_with_valid_checksums(capture):
    for packet in capture["packets"]:
        assert IP in packet and (TCP in packet or UDP in packet)
        assert checksums_hold(packet)
        assert len(packet) >= 60


def test_file_headers_and_directions(capture):
    data = capture["path"].read_bytes()[:4]
    assert stat.S_IMODE(capture["path"].stat().st_mode) == 0o600
    if capture["format"] == "pcap":
        assert data == struct.pack("<I", 0xA1B23C4D)          # nanosecond magic
        return
    options = pcapng_interface_options(capture["path"])
    assert options[2] == b"host-tap"                          # if_name
    assert capture["convention"].encode() in options[3]       # if_description
    assert options[9] == b"\x09"                              # if_tsresol: ns
    for (_, _, direction), packet in zip(capture["records"], capture["packets"]):
        assert direction == (2 if packet[IP].src == "198.18.0.10" else 1)


def test_frames_never_overlap_on_either_direction(capture):
    last_end = {}
    for (stamp, frame, _), packet in zip(capture["records"], capture["packets"]):
        inbound = packet[IP].src != "198.18.0.10"
        start = first_bit(stamp, frame, inbound, capture["convention"])
        gap_ns = 12 * 8 * 10**9 // TEN_GBPS                   # the inter-frame gap, 9.6 ns -> 9
        if inbound in last_end:
            assert start >= last_end[inbound] + gap_ns
        last_end[inbound] = start + wire_time_ns(len(frame))
    stamps = [stamp for stamp, _, _ in capture["records"]]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("rate", [10**10, 10**9, 10**8, 10**6])
@pytest.mark.parametrize("orders", ["binary", "fix"])
def test_no_overlap_at_any_line_rate(rate, orders):
    synthesis = synthesize(SynthConfig(triggers=200, seed=3, line_rate_bps=rate, order_format=orders))
    frames = synthesis.frames
    for direction in (1, 2):
        rows = np.flatnonzero(frames.direction == direction)
        rows = rows[np.argsort(frames.first_ns[rows])]
        lengths = frames.frame_len[rows]
        slots = [-(-(8 + max(int(n) + 4, 64) + 12) * 8 * 10**9 // rate) for n in lengths]
        assert (np.diff(frames.first_ns[rows]) >= np.array(slots[:-1])).all()


def test_truth_agrees_with_the_frames(capture):
    convention, truth = capture["convention"], capture["truth"]
    md_first_bit, host_segments = {}, []
    for (stamp, frame, _), packet in zip(capture["records"], capture["packets"]):
        inbound = packet[IP].src != "198.18.0.10"
        start = first_bit(stamp, frame, inbound, convention)
        if UDP in packet:
            payload = bytes(packet[UDP].payload)
            if Padding in packet:
                payload = payload[:len(payload) - len(packet[Padding])]
            md_first_bit[decode_md(payload).seq] = start
        elif not inbound and len(packet[TCP].payload) and Padding not in packet:
            host_segments.append((packet[TCP].seq, bytes(packet[TCP].payload), start, len(frame)))
    assert len(md_first_bit) == len([p for p in capture["packets"] if UDP in p])
    isn = min(seq for seq, *_ in host_segments) - 1
    stream = reassemble([(seq - isn - 1, payload) for seq, payload, *_ in host_segments])
    assert len(stream) == TRIGGERS * NEW_ORDER_SIZE
    frames = frame_order_stream(np.frombuffer(stream, np.uint8))
    assert len(frames) == TRIGGERS and frames.error is None
    new_orders = decode_new_orders(np.frombuffer(stream, np.uint8), frames.offset)
    assert new_orders["trigger_seq"].tolist() == [row["md_seq"] for row in truth]
    for k, row in enumerate(truth):
        assert row["t_md_ns"] == md_first_bit[row["md_seq"]]
        # The first copy of each byte of the order: when did the order start, and end, on the wire?
        lo, hi = k * NEW_ORDER_SIZE, (k + 1) * NEW_ORDER_SIZE
        covering = sorted((start, seq - isn - 1, len(payload), frame_len)
                          for seq, payload, start, frame_len in host_segments
                          if seq - isn - 1 < hi and seq - isn - 1 + len(payload) > lo)
        first_copy, seen = [], set()
        for start, offset, size, frame_len in covering:
            new = set(range(max(offset, lo), min(offset + size, hi))) - seen
            if new:
                first_copy.append(start + wire_time_ns(frame_len))
                seen |= new
        assert seen == set(range(lo, hi))
        assert row["order_first_bit_ns"] == covering[0][0]
        assert row["order_last_byte_ns"] == max(first_copy)
        assert row["tick_to_trade_ns"] == row["order_first_bit_ns"] - row["t_md_ns"]


def test_the_capture_has_split_retransmitted_and_out_of_order_segments(capture):
    host = [p for p in capture["packets"] if TCP in p and p[IP].src == "198.18.0.10"]
    venue = [p for p in capture["packets"] if TCP in p and p[IP].src != "198.18.0.10"]
    lengths = [len(p[TCP].payload) - (len(p[Padding]) if Padding in p else 0) for p in host]
    assert lengths.count(NEW_ORDER_PREFIX_BYTES) >= 1
    for side in (host, venue):
        data = [(p[TCP].seq, len(p[TCP].payload)) for p in side
                if len(p[TCP].payload) and Padding not in p]
        assert len({seq for seq, _ in data}) < len(data)                       # a retransmission
        assert any(b[0] < a[0] for a, b in itertools.pairwise(data) if a[0] != b[0])  # out of order
    assert [p[TCP].flags for p in host[:2]] == ["S", "A"] and venue[0][TCP].flags == "SA"
    assert "F" in host[-2][TCP].flags and "F" in venue[-1][TCP].flags


def test_venue_messages_decode(capture):
    venue = [p for p in capture["packets"] if TCP in p and p[IP].src != "198.18.0.10"]
    isn = venue[0][TCP].seq
    stream = reassemble([(p[TCP].seq - isn - 1, bytes(p[TCP].payload)[:p[IP].len - 40])
                         for p in venue if p[IP].len > 40])
    frames = frame_order_stream(np.frombuffer(stream, np.uint8))
    assert frames.error is None and frames.tail_bytes == 0
    kinds = [type(decode_order(stream[o:o + n])).__name__ for o, n in zip(frames.offset, frames.length)]
    assert kinds.count("Ack") + kinds.count("Reject") == TRIGGERS and "Fill" in kinds


def test_conventions_share_one_truth_and_a_seed_repeats(tmp_path):
    _, hardware = synth(tmp_path, "--triggers", 40, "--seed", 5, name="a.pcap")
    _, software = synth(tmp_path, "--triggers", 40, "--seed", 5, "--convention", "software", name="b.pcap")
    again, _ = synth(tmp_path, "--triggers", 40, "--seed", 5, name="c.pcap")
    assert hardware == software
    assert (tmp_path / "a.pcap").read_bytes() == again.read_bytes()
    assert stat.S_IMODE((tmp_path / "a.pcap.csv").stat().st_mode) == 0o600


def test_fix_orders_carry_the_trigger_seq_in_tag_9001(tmp_path):
    out, truth = synth(tmp_path, "--triggers", 30, "--seed", 2, "--orders", "fix", name="fix.pcap")
    host = [p for p in map(Ether, (frame for _, frame, _ in read_records(out)))
            if TCP in p and p[IP].src == "198.18.0.10" and p[IP].len > 40]
    isn = min(p[TCP].seq for p in host) - 1
    stream = reassemble([(p[TCP].seq - isn - 1, bytes(p[TCP].payload)) for p in host])
    frames = fix.frame_fix_stream(stream)
    assert len(frames) == 30 and frames.error is None
    assert fix.fix_tag_values(stream, frames.offset, frames.length, 9001).tolist() == \
        [row["md_seq"] for row in truth]
    assert fix.decode_fix(stream[:frames.length[0]]).trigger_seq == truth[0]["md_seq"]


def test_slow_line_rate_wire_times(tmp_path):
    out, truth = synth(tmp_path, "--triggers", 20, "--seed", 4, "--line-rate", "100Mbps",
                       "--convention", "software", name="slow.pcap")
    records = read_records(out)
    md = {decode_md(bytes(Ether(f)[UDP].payload)[:Ether(f)[UDP].len - 8]).seq: (stamp, len(f))
          for stamp, f, _ in records if UDP in Ether(f)}
    for row in truth:
        stamp, frame_len = md[row["md_seq"]]
        assert stamp - row["t_md_ns"] == wire_time_ns(frame_len, 100_000_000)   # 10 ns per bit


@pytest.mark.parametrize("flags", [
    ["--triggers", "0"], ["--triggers", "many"], ["--line-rate", "fast"], ["--format", "erf"],
    ["--convention", "atomic"], ["--orders", "itch"],
])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, flags):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "x.pcap"), "--triggers", "5", *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "x.pcap").exists()


def test_unwritable_output_exits_2_with_one_line(lab, tmp_path):
    result = lab("synth", "--out", tmp_path / "missing" / "x.pcap", "--triggers", "5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = lab("synth", "--out", tmp_path / "x.pcap", "--triggers", "-3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("file_format", ["pcap", "pcapng"])
def test_tshark_reads_the_file_with_our_stamps_and_checksums(tmp_path, file_format):
    out, _ = synth(tmp_path, "--triggers", 30, "--seed", 9, "--format", file_format,
                   "--convention", "software", name=f"t.{file_format}")
    result = subprocess.run(
        ["tshark", "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
         "-o", "udp.check_checksum:TRUE", "-T", "fields", "-e", "frame.time_epoch",
         "-e", "ip.checksum.status", "-e", "tcp.checksum.status", "-e", "udp.checksum.status"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0
    assert [line for line in result.stderr.splitlines() if "Running as user" not in line] == []
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    stamps = [int(Decimal(row[0]) * 10**9) for row in rows]
    assert stamps == [stamp for stamp, _, _ in read_records(out)]
    assert all(row[1] == "1" and "1" in (row[2], row[3]) for row in rows)   # 1 = good
