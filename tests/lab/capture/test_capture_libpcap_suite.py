"""libpcap's own test captures (tests/data/libpcap-tests, BSD): `lab info` reads what
libpcap-based tools read (issue 16).

References, never lab's own output: tshark (Wireshark's reader; the suite's README
makes it the reference) and tcpdump (libpcap itself, which also reads the link types
tshark 4.0 does not know, e.g. the DSA tags of brcm-tag*.pcap and dsa.pcap). For each
file and each reference:

- The reference reads the file *without an error*: `lab info --json` gives the same
  `packets` and the same earliest and latest stamp (`first_ts_ns`, `last_ts_ns` are the
  minimum and maximum over the file, not the first and last record), to the ns.
- The reference stops with an error after N frames: libpcap hands out the records
  before a bad one and then fails (pcap_next_ex() returns -1), and tshark prints the
  frames it read before its error, so those N are packets of the file. lab must count
  at least them, and its earliest/latest stamps must enclose theirs. (It may count
  more: lab skips one damaged pcapng block and goes on, and reads the pcapng files
  libpcap gives up on because their interfaces differ in link type or snaplen or an
  EPB is longer than its IDB's snaplen, which Wireshark reads.)
- On every file `lab info` exits 0 or 2, never with a traceback; with 2 the error is
  one line.

"Without an error", from what the tools print on these files: tshark exits 0 and its
stderr has nothing but the note about running as root. When it cannot read a file it
exits 2 and names the problem on stderr, after any frames it did read ('... contains
record data that TShark doesn't support' with '(pcap: network type 281 unknown or
unsupported)', '... appears to be damaged or corrupt', '... appears to have been cut
short in the middle of a packet', "... isn't a capture file in a format TShark
understands"). tcpdump exits 0 and prints only 'reading from file ...' on stderr; an
error is exit status 1 and a 'tcpdump: ...' line (at open, or 'pcap_loop: ...' mid-file).
Any other stderr line, or any other exit status, also counts as an error here.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from capture_builders import epb, frame, idb, pcap_header, pcap_record, shb
from lab.cli import main

DATA = Path(__file__).resolve().parents[2] / "data"
SUITE = DATA / "libpcap-tests"
FILES = sorted(p for p in SUITE.rglob("*") if p.suffix in (".pcap", ".pcapng"))
# The same rule on the other captures in the repo that libpcap reads: Wireshark's
# pcapng suite (its own tests are test_capture_peer_suite.py).
PCAPNG_SUITE = sorted((DATA / "pcapng-test-generator").glob("output_*/*/*.pcapng"))
NS = 10**9
TSHARK_ROOT_NOTE = re.compile(r'^Running as user ".*" and group ".*"\. This could be dangerous\.$')
TCPDUMP_STAMP = re.compile(r"^(\d+)\.(\d{9}) ", re.M)  # -tt --time-stamp-precision=nano


def file_id(path: Path) -> str:
    return str(path.relative_to(SUITE if SUITE in path.parents else DATA / "pcapng-test-generator"))


def test_suite_is_present_with_licence():
    assert (SUITE / "LICENSE").read_text().startswith("License: BSD")
    assert "tshark" in (SUITE / "README.md").read_text()
    assert len(FILES) == 43
    assert len([p for p in FILES if p.parent.name == "filter"]) == 37


# --- the references --------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What a reference tool read from a file."""
    tool: str
    clean: bool                           # read to the end without an error
    frames: int                           # frames read (before the error, if any)
    stamps: tuple[int, ...] | None        # their stamps in ns (none for an SPB); None: not all printed
    cap_lens: tuple[int, ...] | None      # tshark's frame.cap_len (tcpdump: not known)
    error: str = ""                       # what it said about the file


def epoch_ns(text: str) -> int:
    """tshark's frame.time_epoch ("1700000000.123456789", "-5.25") as int ns, exactly:
    the fraction is padded to 9 digits, never parsed as a float."""
    sign = -1 if text.startswith("-") else 1
    seconds, _, fraction = text.lstrip("-").partition(".")
    assert seconds.isdigit() and len(fraction) <= 9 and (fraction == "" or fraction.isdigit()), text
    return sign * (int(seconds) * NS + int(fraction.ljust(9, "0")))


def tshark_reading(path: Path) -> Reading:
    result = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields",
                             "-e", "frame.time_epoch", "-e", "frame.cap_len"],
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line and not TSHARK_ROOT_NOTE.match(line)]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    # An SPB has no stamp: tshark prints an empty frame.time_epoch, lab leaves it out of first/last.
    return Reading("tshark", result.returncode == 0 and not errors, len(rows),
                   tuple(epoch_ns(epoch) for epoch, _ in rows if epoch),
                   tuple(int(caplen) for _, caplen in rows),
                   " ".join(errors) or f"exit status {result.returncode}")


def tcpdump_reading(path: Path) -> Reading:
    def run(*args):
        return subprocess.run(["tcpdump", "-r", str(path), *args], capture_output=True, text=True, timeout=120)

    counted = run("--count")                                          # "N packets" on stdout
    printed = run("-nn", "-q", "-tt", "--time-stamp-precision=nano")  # a line per packet
    errors = [line for result in (counted, printed) for line in result.stderr.splitlines()
              if line and not line.startswith("reading from file ")]
    count = re.search(r"^(\d+) packets?$", counted.stdout, re.M)
    frames = int(count.group(1)) if count else 0
    # A packet's line starts with its stamp (its other lines are indented), but tcpdump
    # prints "[Invalid header: caplen(300000) > 262144 ...]" instead for a record above
    # its own printing limit that libpcap did read: then the stamps are not all known.
    stamps = tuple(int(s) * NS + int(f) for s, f in TCPDUMP_STAMP.findall(printed.stdout))
    return Reading("tcpdump", counted.returncode == printed.returncode == 0 and not errors, frames,
                   stamps if len(stamps) == frames else None, None,
                   " ".join(dict.fromkeys(errors)) or f"exit status {printed.returncode}")


READERS = {"tshark": tshark_reading, "tcpdump": tcpdump_reading}


class References:
    """Reference runs, started in the background and shared by the tests: tshark takes
    ~0.3 s a file, nearly all of it start-up, so they run side by side."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self._runs = {}

    def start(self, tool: str, path: Path) -> None:
        if shutil.which(tool) is not None and (tool, path) not in self._runs:
            self._runs[tool, path] = self._pool.submit(READERS[tool], path)

    def get(self, tool: str, path: Path) -> Reading:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it)")
        self.start(tool, path)
        return self._runs[tool, path].result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# --- lab info, in process ----------------------------------------------------------


@dataclass(frozen=True)
class LabRun:
    code: int
    doc: dict | None
    stderr: str


@cache
def lab_info(path: Path) -> LabRun:
    """`lab info --pcap PATH --json` through the CLI's main(), as test_info_cli.py does: an
    exception other than the CLI's one-line user errors propagates here and fails the test
    (the traceback a user would see)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["info", "--pcap", str(path), "--json"])
        except SystemExit as exc:
            code = exc.code
    return LabRun(code, json.loads(out.getvalue()) if code == 0 else None, err.getvalue())


def assert_exits_cleanly(run: LabRun) -> None:
    assert run.code in (0, 2)
    assert "Traceback" not in run.stderr
    if run.code == 2:
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert run.doc is None


def assert_agrees(reference: Reading, run: LabRun, compare_stamps: bool = True) -> None:
    """The rule of the module docstring; skips where the reference reads no frame at all."""
    if not reference.clean and not reference.frames:
        pytest.skip(f"{reference.tool} does not read it: {reference.error}")
    assert run.code == 0, run.stderr
    doc = run.doc
    stamped = reference.stamps if compare_stamps else None
    if reference.clean:
        assert doc["packets"] == reference.frames
        if stamped is not None:
            expected = (min(stamped), max(stamped)) if stamped else (None, None)
            assert (doc["first_ts_ns"], doc["last_ts_ns"]) == expected
        if reference.cap_lens is not None:
            # Wireshark keeps a record's whole caplen, also above the snaplen; so does lab.
            assert doc["bytes"] == sum(reference.cap_lens)
    else:
        # Cut short: the frames before the error are packets (see the module docstring).
        assert doc["packets"] >= reference.frames, reference.error
        if stamped:
            assert doc["first_ts_ns"] <= min(stamped) and doc["last_ts_ns"] >= max(stamped)


def spb_count(path: Path) -> int:
    """SPBs in a file (they have no stamp: tshark prints none, libpcap stamps them 0, lab
    counts them as missing_ts). The pcapng suite's .txt files list their blocks; the
    libpcap suite has none (its one pcapng file with packets holds two EPBs)."""
    txt = path.with_suffix(".txt")
    if not txt.exists():
        return 0
    found = re.search(r"^\s*SPB:\s*(\d+)\s*$", txt.read_text().split("Block sequence:")[0], re.M)
    return int(found.group(1)) if found else 0


# --- synthetic files: odd but legal, and over the limits ----------------------------

ORDERS = {"le": "<", "be": ">"}
SNAPLEN = 64


def over_snaplen(order: str, nanosecond: bool) -> bytes:
    """Records of 60, 1514 and 262144 bytes (the largest for Ethernet) in a file with snaplen 64."""
    fraction = 123_456_789 if nanosecond else 123_456
    return (pcap_header(order, nanosecond, snaplen=SNAPLEN)
            + pcap_record(order, 1_700_000_000, fraction, frame(1, 60))
            + pcap_record(order, 1_700_000_001, fraction, frame(2, 1514))
            + pcap_record(order, 1_700_000_002, 5, frame(3, 262_144)))


def swapped_lengths(major: int, minor: int) -> bytes:
    """Before 2.3 (and in DG/UX's 543.0) a record header has len before caplen."""
    records = [struct.pack("<IIII", 1_700_000_000 + i, i, 1514, 60 + i) + frame(i, 60 + i) for i in range(2)]
    return pcap_header(major=major, minor=minor, snaplen=1514) + b"".join(records)


# What a reference does with a file:
READ = "read"          # reads it all: lab gives the same count and stamps, and no damage
CUT = "cut"            # stops with an error at a bad record: lab counts the same records
                       # before it and reports the rest as damage
GIVES_UP = "gives up"  # stops at a record that lab reads: lab counts at least its frames
REFUSED = "refused"    # reads nothing: lab exits 2 with one line
# tshark runs ~0.3 s a file, so it checks the cases of issue 16 (caplen above the snaplen,
# above the largest, a file cut short); libpcap (tcpdump, ~10 ms) checks every file.
# (tshark agrees on the others too: it reads 2.2, 2.3, 543.0 and pcapng 1.2, and refuses
# pcapng 1.1.)
BOTH_READ = {"tshark": READ, "tcpdump": READ}

# name -> (content, {tool: what it does})
SYNTHETIC = {
    **{f"caplen-over-snaplen-{o}-{'ns' if ns else 'us'}.pcap": (over_snaplen(order, ns), BOTH_READ)
       for o, order in ORDERS.items() for ns in (False, True)},
    # Above the largest caplen: tshark and libpcap stop there, after the record before it.
    "caplen-over-max.pcap": (pcap_header(nanosecond=True, snaplen=SNAPLEN)
                             + pcap_record("<", 1_700_000_000, 1, frame(1, 60))
                             + pcap_record("<", 1_700_000_001, 2, frame(2, 262_145)),
                             {"tshark": CUT, "tcpdump": CUT}),
    "cut-short.pcap": ((pcap_header() + b"".join(pcap_record("<", 1_700_000_000 + i, i, frame(i))
                                                 for i in range(3)))[:-30], {"tshark": CUT, "tcpdump": CUT}),
    # libpcap refuses an EPB above the IDB's snaplen; Wireshark (and lab) read it.
    **{f"pcapng-epb-over-snaplen-{o}.pcapng": (
        shb(order) + idb(order, snaplen=SNAPLEN, tsresol=9)
        + epb(order, 0, 1_700_000_000_123_456_789, frame(1, 60))
        + epb(order, 0, 1_700_000_001_123_456_789, frame(2, 1514)), {"tshark": READ, "tcpdump": GIVES_UP})
       for o, order in ORDERS.items()},
    # A USBPcap record may be larger (libpcap's max_snaplen_for_dlt: 1 MiB; D-Bus 128 MiB).
    # (tcpdump prints no stamp for it, see tcpdump_reading; tshark does.)
    "usbpcap-300000.pcap": (pcap_header(linktype=249, snaplen=0)
                            + pcap_record("<", 1_700_000_000, 7, frame(1, 300_000)), BOTH_READ),
    "version-2.2.pcap": (swapped_lengths(2, 2), {"tcpdump": READ}),
    "version-543.0.pcap": (swapped_lengths(543, 0), {"tcpdump": READ}),
    # 2.3 was written both ways: caplen > len means swapped.
    "version-2.3.pcap": (pcap_header(minor=3) + struct.pack("<IIII", 1, 0, 1514, 60) + frame(0, 60)
                         + pcap_record("<", 2, 0, frame(1, 70)), {"tcpdump": READ}),
    "pcapng-version-1.2.pcapng": (shb(minor=2) + idb() + epb("<", 0, 1_700_000_000_000_001, frame(1)),
                                  {"tcpdump": READ}),
    "pcapng-version-1.1.pcapng": (shb(minor=1) + idb() + epb("<", 0, 1_700_000_000_000_001, frame(1)),
                                  {"tcpdump": REFUSED}),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("libpcap-synthetic")
    paths = {}
    for name, (content, _) in SYNTHETIC.items():
        paths[name] = folder / name
        paths[name].write_bytes(content)
    return paths


@pytest.fixture(scope="module")
def references(synthetic):
    refs = References()
    for path in FILES:
        refs.start("tshark", path)
    for path in FILES + PCAPNG_SUITE:
        refs.start("tcpdump", path)
    for name, (_, tools) in SYNTHETIC.items():
        for tool in tools:
            refs.start(tool, synthetic[name])
    yield refs
    refs.close()


# --- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES + PCAPNG_SUITE, ids=file_id)
def test_lab_info_exits_cleanly(path):
    assert_exits_cleanly(lab_info(path))


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_agrees_with_tshark(references, path):
    assert_agrees(references.get("tshark", path), lab_info(path))


@pytest.mark.parametrize("path", FILES + PCAPNG_SUITE, ids=file_id)
def test_agrees_with_libpcap(references, path):
    # libpcap stamps an SPB 0 where lab has no stamp: only the count is comparable there.
    assert_agrees(references.get("tcpdump", path), lab_info(path), compare_stamps=spb_count(path) == 0)


@pytest.mark.parametrize("name, tool", [(name, tool) for name, (_, tools) in SYNTHETIC.items()
                                        for tool in tools])
def test_synthetic_files(references, synthetic, name, tool):
    expected = SYNTHETIC[name][1][tool]
    reference, run = references.get(tool, synthetic[name]), lab_info(synthetic[name])
    assert_exits_cleanly(run)
    # Pin what the reference does, so that each file tests what its name says.
    assert reference.clean == (expected == READ), reference.error
    if expected == REFUSED:
        assert reference.frames == 0 and run.code == 2
        return
    assert reference.frames > 0
    assert_agrees(reference, run)
    if expected == READ:
        assert "skipped" not in run.doc
    elif expected == CUT:
        assert run.doc["packets"] == reference.frames and run.doc["skipped"]["records"] == 1


@pytest.mark.parametrize("path", [SUITE / "pcapng-invalid-vers-2.pcapng",
                                  SUITE / "filter" / "slip-compressed_sl_print-oobr.pcap"], ids=file_id)
def test_as_a_real_process(lab, path):
    """One file lab refuses (as tshark and libpcap do) and one with a record above its
    snaplen (tshark and libpcap read 1 frame), through a real `python -m lab`."""
    result = lab("info", "--pcap", path, "--json")
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1
    else:
        assert json.loads(result.stdout)["packets"] == 1

