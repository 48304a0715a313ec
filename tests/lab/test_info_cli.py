"""`lab info` as a user runs it."""
import json
import struct
from types import SimpleNamespace

import dpkt
import pytest

from lab.capture import Interface, PcapngWriter
from lab.cli import main
from lab.synth import SynthConfig, synthesize, write_capture


@pytest.fixture
def lab_main(capsys):
    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("info") / "synth.pcapng"
    written = write_capture(synthesize(SynthConfig(triggers=100, seed=4)), str(path), "pcapng", "software")
    return path, written


def pcap_header(linktype=1, magic=0xA1B23C4D):
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)


def test_json_agrees_with_dpkt(lab, capture):
    path, written = capture
    result = lab("info", "--pcap", path, "--json")                        # as a real process
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    with open(path, "rb") as f:
        frames = [(ts, buf) for ts, buf in dpkt.pcapng.Reader(f)]
    assert doc["packets"] == len(frames) == written["frames"]
    assert doc["bytes"] == sum(len(buf) for _, buf in frames)
    assert (doc["first_ts_ns"], doc["last_ts_ns"]) == (written["first_ts_ns"], written["last_ts_ns"])
    assert doc["duration_ns"] == doc["last_ts_ns"] - doc["first_ts_ns"]
    [interface] = doc["interfaces"]
    assert (interface["linktype"], interface["tsresol"], interface["name"]) == (1, "1e-9", "host-tap")
    assert "software" in interface["description"] and interface["packets"] == doc["packets"]
    assert doc["format"] == "pcapng" and "skipped" not in doc


def test_table(lab_main, capture):
    path, _ = capture
    result = lab_main("info", "--pcap", path)
    assert result.returncode == 0
    assert "host-tap" in result.stdout and "1e-9" in result.stdout and "duration" in result.stdout


def test_empty_but_valid_files_have_zero_packets(lab_main, tmp_path):
    pcap = tmp_path / "empty.pcap"
    pcap.write_bytes(pcap_header(113))
    pcapng = tmp_path / "empty.pcapng"
    with PcapngWriter(str(pcapng), [Interface(linktype=276, tsresol="1e-9", snaplen=0, name="any")]):
        pass
    for path, linktype in ((pcap, 113), (pcapng, 276)):
        result = lab_main("info", "--pcap", path, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["packets"] == 0 and doc["bytes"] == 0 and doc["duration_ns"] == 0
        assert doc["first_ts_ns"] is None and doc["last_ts_ns"] is None
        assert doc["interfaces"][0]["linktype"] == linktype


def test_microsecond_pcap_stamps_in_ns(lab_main, tmp_path):
    path = tmp_path / "us.pcap"
    record = struct.pack("<IIII", 1_700_000_000, 123_456, 60, 60) + bytes(60)
    path.write_bytes(pcap_header(magic=0xA1B2C3D4) + record + record)
    doc = json.loads(lab_main("info", "--pcap", path, "--json").stdout)
    assert doc["first_ts_ns"] == 1_700_000_000_123_456_000 and doc["packets"] == 2
    assert doc["interfaces"][0]["tsresol"] == "1e-6"


def test_damaged_tail_is_reported(lab_main, capture, tmp_path):
    path, written = capture
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(path.read_bytes()[:-10])
    result = lab_main("info", "--pcap", cut, "--json")
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc["packets"] == written["frames"] - 1
    assert doc["skipped"]["records"] == 1 and doc["skipped"]["bytes"] > 0 and doc["skipped"]["reasons"]


@pytest.mark.parametrize("name,content", [
    ("empty", b""), ("wrong-magic", b"GIF89a" + bytes(30)), ("truncated-header", pcap_header()[:10])])
def test_unreadable_files_exit_2_with_one_line(lab_main, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = lab_main("info", "--pcap", path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr


def test_bad_flags(lab):
    result = lab("info")                                                  # as a real process
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
