"""`lab measure --trailer`: the timing card's stamps replace a skewed capture clock."""
import csv
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from lab.capture import PcapWriter, open_capture


def metamako(ts_ns):
    return struct.pack(">IIIBHB", 0x12345678, ts_ns // 10**9, ts_ns % 10**9, 0, 7, 3)


def expcap(ts_ns):
    picoseconds = (ts_ns % 10**9) * 1000
    return struct.pack("<I", ts_ns // 10**9) + picoseconds.to_bytes(5, "little") + bytes(3) + bytes(4)


def lab(*args):
    return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def per_trigger(path):
    with open(path) as f:
        return {int(r["md_seq"]): int(r["tick_to_trade_ns"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("kind,trailer", [("metamako", metamako), ("expcap", expcap)])
def test_trailer_stamps_recover_the_truth_from_a_skewed_capture(tmp_path, kind, trailer):
    clean, truth = tmp_path / "clean.pcap", tmp_path / "truth.csv"
    made = lab("synth", "--out", clean, "--triggers", 300, "--seed", 5, "--format", "pcap", "--truth", truth)
    assert made.returncode == 0, made.stderr
    rng = np.random.default_rng(1)
    skewed = tmp_path / "skewed.pcap"
    with open_capture(clean) as capture, PcapWriter(skewed) as out:
        batch = capture.read_all()
        for i in range(len(batch)):
            true_ns = int(batch.ts_ns[i])
            # the capturing host's clock is off by 3 us and jitters by up to 2 us
            out.write(true_ns - 3_000 + int(rng.integers(0, 2_000)), batch.frame(i) + trailer(true_ns))
    with open(truth) as f:
        expected = {int(r["md_seq"]): int(r["tick_to_trade_ns"]) for r in csv.DictReader(f)}

    result = lab("measure", "--pcap", skewed, "--trailer", kind, "--json", "--csv", tmp_path / "t.csv")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["timestamps"] == f"trailer:{kind}" and report["matched"] == len(expected)
    assert per_trigger(tmp_path / "t.csv") == expected

    without = lab("measure", "--pcap", skewed, "--json", "--csv", tmp_path / "u.csv")
    assert without.returncode == 0
    assert per_trigger(tmp_path / "u.csv") != expected          # the capture's own clock is off


def test_trailer_needs_the_hardware_convention(tmp_path):
    clean = tmp_path / "clean.pcap"
    assert lab("synth", "--out", clean, "--triggers", 10, "--format", "pcap").returncode == 0
    result = lab("measure", "--pcap", clean, "--trailer", "metamako", "--convention", "software",
                 "--line-rate", "10Gbps")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert lab("measure", "--pcap", clean, "--trailer", "bogus").returncode == 2
