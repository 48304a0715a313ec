"""The pcapng test files Wireshark's suite uses (tests/data/pcapng-test-generator,
MIT), in both byte orders: counts from each file's .txt, contents against scapy and dpkt."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest
from scapy.utils import RawPcapNgReader

from lab.capture import NO_TIMESTAMP, open_capture

SUITE = Path(__file__).resolve().parents[2] / "data" / "pcapng-test-generator"
FILES = sorted(SUITE.glob("output_*/*/*.pcapng"))
PACKET_BLOCKS = ("EPB", "SPB", "PB")


def block_counts(path: Path) -> dict[str, int]:
    """The "Block counts:" section of the .txt beside a test file."""
    text = path.with_suffix(".txt").read_text()
    section = text.split("Block counts:", 1)[1].split("Block sequence:", 1)[0]
    return {name: int(n) for name, n in re.findall(r"^\s*(\w+):\s*(\d+)\s*$", section, re.M)}


def file_id(path: Path) -> str:
    return f"{path.parts[-3]}/{path.stem}"


def test_suite_is_present_with_licence():
    assert (SUITE / "LICENSE").read_text().startswith("The MIT License")
    assert len(FILES) == 2 * 24
    assert {p.parts[-3] for p in FILES} == {"output_le", "output_be"}


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_packet_count_is_what_the_txt_implies(path):
    counts = block_counts(path)
    with open_capture(path) as capture:
        batch = capture.read_all()
        assert capture.format == "pcapng"
        assert capture.damage == []
        assert len(batch) == sum(counts.get(name, 0) for name in PACKET_BLOCKS)
        assert len(capture.interfaces) == counts.get("IDB", 0)
        # Only SPBs lack a timestamp.
        assert capture.missing_ts == counts.get("SPB", 0)


def scapy_packets(path: Path):
    reader = RawPcapNgReader(str(path))
    packets = []
    try:
        while True:
            packets.append(reader._read_packet(size=1 << 20))
    except EOFError:
        pass
    finally:
        reader.close()
    return reader.interfaces, packets


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_agrees_with_scapy(path):
    interfaces, packets = scapy_packets(path)
    with open_capture(path) as capture:
        batch = capture.read_all()
        ours = capture.interfaces
        assert [i.linktype for i in ours] == [linktype for linktype, _, _ in interfaces]
        assert [i.snaplen for i in ours] == [snaplen for _, snaplen, _ in interfaces]
        assert len(batch) == len(packets)
        # scapy keeps one interface list across sections (it does not restart the
        # numbering at an SHB), so what it takes from a packet's interface (link
        # type, SPB snaplen) is only comparable in single-section files.
        single_section = block_counts(path).get("SHB", 1) == 1
        for i, (data, meta) in enumerate(packets):
            assert int(batch.wire_len[i]) == meta.wirelen
            if meta.tshigh is None:
                # SPB: scapy invents the current time; pcapng gives no stamp at all.
                assert batch.ts_ns[i] == NO_TIMESTAMP
                # scapy takes snaplen 0 ("no limit") literally; compare where it does not.
                if single_section and ours[batch.interface[i]].snaplen:
                    assert batch.frame(i) == data
                continue
            units = (meta.tshigh << 32) | meta.tslow
            assert int(batch.ts_ns[i]) == units * 10**9 // meta.tsresol
            assert batch.frame(i) == data
            assert int(batch.direction[i]) == (meta.direction or 0)
            if single_section:
                assert ours[batch.interface[i]].linktype == meta.linktype


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_agrees_with_dpkt(path):
    counts = block_counts(path)
    if counts.get("SHB", 1) > 1:
        pytest.skip("dpkt reads only the first section of a multi-section file")
    if counts.get("SPB", 0) or counts.get("PB", 0):
        pytest.skip("dpkt's pcapng reader drops SPBs and PBs")
    try:
        with open(path, "rb") as f:
            theirs = [(ts, buf) for ts, buf in dpkt.pcapng.Reader(f)]
    except ValueError as exc:
        pytest.skip(f"dpkt cannot read this file: {exc}")
    with open_capture(path) as capture:
        batch = capture.read_all()
    assert len(batch) == len(theirs)
    for i, (ts, buf) in enumerate(theirs):
        assert batch.frame(i) == bytes(buf)
        # dpkt gives float seconds: compare to its resolution (1 us here), not to the ns.
        assert abs(int(batch.ts_ns[i]) / 1e9 - ts) < 1e-6


MULTI_SECTION = [p for p in FILES if block_counts(p).get("SHB", 1) > 1]


@pytest.mark.parametrize("path", MULTI_SECTION, ids=file_id)
def test_multi_section_files_agree_with_tshark(path):
    """scapy and dpkt do not restart interface numbering at an SHB; tshark does for
    lengths and stamps. (tshark 4.0's frame.interface_name looks the section-local
    id up in its file-wide list, so names are not compared here.)"""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    fields = ["frame.interface_id", "frame.cap_len", "frame.len", "frame.time_epoch"]
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields"]
                         + [arg for f in fields for arg in ("-e", f)],
                         capture_output=True, text=True, check=True).stdout
    # tshark also lists CB/DCB records as frames; they have no interface.
    rows = [line.split("\t") for line in out.splitlines() if line.split("\t")[0]]
    with open_capture(path) as capture:
        batch = capture.read_all()
        assert len(batch) == len(rows)
        for i, (_, caplen, wire_len, epoch) in enumerate(rows):
            assert (int(batch.caplen[i]), int(batch.wire_len[i])) == (int(caplen), int(wire_len))
            expected = NO_TIMESTAMP if epoch == "" else int(epoch.replace(".", ""))
            assert int(batch.ts_ns[i]) == expected
