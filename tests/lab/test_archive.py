"""Many capture files read as one (`lab measure --pcap PATH...`, `lab info`), checked against mergecap.

The reference is always `mergecap -w merged.pcapng FILES...` read as one file: the set must give what
the merged file gives, never what lab itself says of the set. Archives are cut from `lab synth`
captures with editcap (by packet count, at counts where a split order's segments and a
retransmission and its original fall in different files; by time) and tshark (MD and orders in two
files that span the same time).
"""
import contextlib
import csv
import importlib.util
import io
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.capture import Interface, PcapngWriter, open_capture
from lab.capture.archive import CaptureSet
from lab.cli import main

MISSING = [tool for tool in ("mergecap", "editcap", "tshark", "capinfos") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (apt-get install tshark)")

TRIGGERS = 300
SPLIT_ORDER_NS = 1500      # an order whose last byte came this long after its first bit went out in pieces
# name: (file format, lab synth flags); lab measure gets --telemetry where synth wrote one
VARIANTS = {
    "pcapng-binary": ("pcapng", []),
    "pcap-binary": ("pcap", []),
    "pcapng-ouch42-itch50": ("pcapng", ["--orders", "ouch42", "--md", "itch50"]),
    "pcap-ouch42-itch50": ("pcap", ["--orders", "ouch42", "--md", "itch50"]),
}
# Fields only the set has, or that name the files: the merged file is one path, mergecap always
# writes pcapng (so `format` says pcapng for a set of pcap files), and it has no file list.
SET_ONLY = ("file", "format", "files", "bytes_read", "warnings")


def lab(*args):
    """`lab ARGS` in this process (the machine is slow; a process each would cost seconds):
    (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def tool(*args) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[0]}: {result.stderr}"
    return result.stdout


def mergecap(out: Path, files) -> Path:
    tool("mergecap", "-w", out, *files)
    return out


def measured(*paths, flags=()) -> dict:
    status, out, err = lab("measure", "--pcap", *paths, "--json", *flags)
    assert status == 0, err
    return json.loads(out)


def assert_same_measurement(got: dict, reference: dict) -> None:
    """Every per-trigger figure, count and listed miss of the set equals the mergecap'd file's."""
    assert set(got) - set(reference) <= set(SET_ONLY)
    assert {k: v for k, v in got.items() if k not in SET_ONLY} == \
           {k: v for k, v in reference.items() if k not in SET_ONLY}


class Synth:
    """A `lab synth` capture, its measure flags, and per frame what tshark says of it."""

    def __init__(self, folder: Path, name: str):
        self.format, synth_flags = VARIANTS[name]
        self.folder = folder
        self.path = folder / f"whole.{self.format}"
        truth = folder / "truth.csv"
        extra = []
        if "--orders" in synth_flags:
            extra = ["--telemetry", folder / "links.tel"]
        status, _, err = lab("synth", "--out", self.path, "--triggers", TRIGGERS, "--format", self.format,
                             "--truth", truth, *synth_flags, *extra)
        assert status == 0, err
        self.flags = [str(a) for a in extra]
        self.pcap_flags = ["-F", "nsecpcap"] if self.format == "pcap" else []   # else they write pcapng
        self.truth = list(csv.DictReader(truth.open()))
        rows = tool("tshark", "-r", self.path, "-o", "tcp.relative_sequence_numbers:FALSE", "-T", "fields",
                    "-e", "frame.number", "-e", "frame.time_epoch", "-e", "ip.proto", "-e", "tcp.dstport",
                    "-e", "tcp.len", "-e", "tcp.stream", "-e", "tcp.seq", "-e", "tcp.flags.syn",
                    "-e", "tcp.flags.ack", "-e", "tcp.analysis.retransmission")
        self.frames = [dict(zip(("number", "time", "proto", "dport", "len", "stream", "seq", "syn", "ack", "rtx"),
                                line.split("\t"))) for line in rows.splitlines()]
        for frame in self.frames:
            seconds, _, fraction = frame["time"].partition(".")
            frame["ts_ns"] = int(seconds) * 10**9 + int(fraction.ljust(9, "0"))   # no float on the way
            frame["number"] = int(frame["number"])

    def straddling(self) -> tuple[list[range], list[range]]:
        """File boundaries (a file ends after packet b) that cut a split order between its first and
        completing segment, and that put a retransmission in another file than its original."""
        venue_port = next(f["dport"] for f in self.frames if f["syn"] == "1" and f["ack"] == "0")
        to_venue = [f for f in self.frames if f["dport"] == venue_port and f["len"] not in ("", "0")]
        by_ts = {f["ts_ns"]: f["number"] for f in to_venue}
        orders = []
        for row in self.truth:
            first, last = int(row["order_first_bit_ns"]), int(row["order_last_byte_ns"])
            if last - first > SPLIT_ORDER_NS:
                completing = max(f["number"] for f in to_venue if f["ts_ns"] < last)
                orders.append(range(by_ts[first], completing))
        retransmissions = []
        for frame in self.frames:
            if frame["rtx"] == "1":
                original = min(f["number"] for f in self.frames if (f["stream"], f["seq"]) ==
                               (frame["stream"], frame["seq"]) and f["len"] not in ("", "0"))
                retransmissions.append(range(original, frame["number"]))
        return orders, retransmissions

    def split_by_count(self) -> tuple[int, list[Path]]:
        """editcap -c N at the smallest N >= 150 whose boundaries cut both a split order and a
        retransmission from its original."""
        orders, retransmissions = self.straddling()
        assert orders and retransmissions, "lab synth wrote no split order or retransmission"
        packets = len(self.frames)

        def cuts(n, ranges):
            return any(b in r for r in ranges for b in range(n, packets, n))
        count = next(n for n in range(150, packets) if cuts(n, orders) and cuts(n, retransmissions))
        return count, self.editcap("count", "-c", count)

    def editcap(self, name: str, *args) -> list[Path]:
        folder = self.folder / name
        folder.mkdir()
        tool("editcap", *self.pcap_flags, *args, self.path, folder / f"part.{self.format}")
        return sorted(folder.iterdir())

    def split_by_protocol(self) -> list[Path]:
        """Market data and everything else in two files over the same time span (one per port)."""
        folder = self.folder / "ports"
        if folder.exists():
            return [folder / f"{name}.{self.format}" for name in ("md", "orders")]
        folder.mkdir()
        parts = []
        for name, display_filter in (("md", "udp"), ("orders", "not udp")):
            parts.append(folder / f"{name}.{self.format}")
            tool("tshark", "-r", self.path, "-Y", display_filter, *self.pcap_flags, "-w", parts[-1])
        return parts


@pytest.fixture(scope="module", params=list(VARIANTS))
def synth(request, tmp_path_factory):
    return Synth(tmp_path_factory.mktemp(request.param), request.param)


def test_split_by_count_measures_as_the_merged_file(synth):
    count, parts = synth.split_by_count()
    reference = measured(mergecap(synth.folder / "count.pcapng", parts), flags=synth.flags)
    assert reference["matched"] == TRIGGERS                 # the archive kept every order whole
    got = measured(*parts, flags=synth.flags)
    assert_same_measurement(got, reference)
    assert [f["file"] for f in got["files"]] == [str(p) for p in parts]
    assert sum(f["packets"] for f in got["files"]) == got["packets"] == len(synth.frames)
    assert got["bytes_read"] == sum(p.stat().st_size for p in parts) and got["warnings"] == []
    # Sorted by first stamp, not by name or argument order: the parts shuffled give the same.
    shuffled = parts[:]
    random.Random(count).shuffle(shuffled)
    assert_same_measurement(measured(*shuffled, flags=synth.flags), reference)
    # A directory and a glob name the same files.
    assert_same_measurement(measured(parts[0].parent, flags=synth.flags), reference)
    assert_same_measurement(measured(parts[0].parent / f"part_*.{synth.format}", flags=synth.flags), reference)


def test_split_by_time_measures_as_the_merged_file(synth):
    parts = synth.editcap("time", "-i", "0.002")
    assert len(parts) >= 4
    reference = measured(mergecap(synth.folder / "time.pcapng", parts), flags=synth.flags)
    assert_same_measurement(measured(*reversed(parts), flags=synth.flags), reference)


def test_overlapping_files_merge_by_timestamp(synth):
    md, orders = synth.split_by_protocol()
    merged = mergecap(synth.folder / "ports.pcapng", [md, orders])
    reference = measured(merged, flags=synth.flags)
    got = measured(md, orders, flags=synth.flags)
    assert_same_measurement(got, reference)
    assert reference["matched"] == TRIGGERS and got["packets"] == len(synth.frames)
    # Frame numbers are the merged capture's: the listed misses and per-trigger rows agree above,
    # and the whole order of packets is mergecap's, in bytes and stamps.
    with CaptureSet([md, orders]) as captures:
        ours = [(b.frame(i), int(b.ts_ns[i])) for b in captures.batches(max_packets=97) for i in range(len(b))]
    with open_capture(merged) as capture:
        theirs = [(b.frame(i), int(b.ts_ns[i])) for b in capture.batches() for i in range(len(b))]
    assert ours == theirs


def test_info_reports_each_file_and_the_total(synth):
    md, orders = synth.split_by_protocol()
    merged = synth.folder / "info-merged.pcapng"
    mergecap(merged, [md, orders])
    status, out, err = lab("info", "--pcap", md, orders, "--json")
    assert status == 0 and err == ""
    doc = json.loads(out)
    for part, each in zip((md, orders), doc["files"]):
        assert each == json.loads(lab("info", "--pcap", part, "--json")[1])
    # capinfos' figures for the merged file: packets, data bytes, first and last stamp (ns, no float).
    fields = tool("capinfos", "-T", "-r", "-c", "-d", "-a", "-e", "-S", "-M", merged).split("\t")
    packets, data_bytes, first, last = int(fields[1]), int(fields[2]), fields[3], fields[4]
    assert (doc["packets"], doc["bytes"]) == (packets, data_bytes)
    assert (doc["first_ts_ns"], doc["last_ts_ns"]) == (seconds_to_ns(first), seconds_to_ns(last))
    whole = json.loads(lab("info", "--pcap", merged, "--json")[1])
    assert doc["interfaces"] == whole["interfaces"]           # mergecap's IDB merge: one host tap here
    assert doc["duration_ns"] == whole["duration_ns"] and doc["wire_bytes"] == whole["wire_bytes"]


def seconds_to_ns(text: str) -> int:
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 10**9 + int(fraction.ljust(9, "0"))


# --- the merge order itself, on files made to be awkward ---------------------------------------------

def _builders():
    spec = importlib.util.spec_from_file_location(
        "capture_builders", Path(__file__).parent / "capture" / "capture_builders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def awkward_files(folder: Path, seed: int) -> list[Path]:
    """2-4 pcapng files with stamps that go back, equal stamps across files, packets without a
    stamp (SPB), empty files, and either the same interfaces in every file or different ones."""
    build = _builders()
    rng = random.Random(seed)
    same = rng.random() < 0.5
    files, tag = [], 0
    for f in range(rng.randint(2, 4)):
        interfaces = 1 if same else rng.randint(1, 2)
        out = build.shb() + b"".join(build.idb(name=f"tap{0 if same else f}-{k}", tsresol=9)
                                     for k in range(interfaces))
        stamp = rng.randint(0, 5)
        for _ in range(rng.randint(0, 12)):
            tag += 1
            frame = f"packet {tag:05d}".encode().ljust(60, b"\0")
            draw = rng.random()
            if draw < 0.1:
                out += build.spb("<", frame)
            else:
                stamp = max(0, stamp + (rng.randint(-3, 4) if draw < 0.3 else rng.randint(0, 3)))
                out += build.epb("<", rng.randrange(interfaces), stamp, frame)
        files.append(folder / f"f{seed}-{f}.pcapng")
        files[-1].write_bytes(out)
    return files


def test_merge_order_and_interfaces_equal_mergecap_on_unordered_files(tmp_path):
    """Stamps out of order inside a file, ties between files (the file given last goes first), SPBs
    (taken at once; mergecap writes them with stamp 0): frame for frame and interface for interface,
    whatever the batch size."""
    for seed in range(40):
        files = awkward_files(tmp_path, seed)
        merged = mergecap(tmp_path / f"m{seed}.pcapng", files)
        with open_capture(merged) as capture:
            expected = [(b.frame(i), int(b.interface[i])) for b in capture.batches() for i in range(len(b))]
            names = [i.name for i in capture.interfaces]
        for batch_packets in (1, 3, 1000):
            with CaptureSet(files) as captures:
                got = [(b.frame(i), int(b.interface[i]))
                       for b in captures.batches(batch_packets) for i in range(len(b))]
                assert [i.name for i in captures.interfaces] == names, seed
            assert got == expected, (seed, batch_packets)


def test_interface_filter_on_files_with_different_taps(tmp_path):
    """Each file its own tap name: mergecap keeps both interfaces, and --interface picks one, as on the
    merged file."""
    status, _, err = lab("synth", "--out", tmp_path / "s.pcapng", "--triggers", 60)
    assert status == 0, err
    with open_capture(tmp_path / "s.pcapng") as capture:
        batch = capture.read_all()
        parts = []
        for k, name in enumerate(("tap-a", "tap-b")):
            rows = [i for i in range(len(batch)) if i % 2 == k]
            parts.append(tmp_path / f"{name}.pcapng")
            with PcapngWriter(str(parts[-1]), [Interface(linktype=1, tsresol="1e-9", snaplen=0, name=name)]) as out:
                out.write_batch(0, batch.ts_ns[rows], [batch.frame(i) for i in rows])
    merged = mergecap(tmp_path / "taps.pcapng", parts)
    for tap in ("tap-a", "tap-b"):
        assert_same_measurement(measured(*parts, flags=["--interface", tap]),
                                measured(merged, flags=["--interface", tap]))
    status, _, err = lab("measure", "--pcap", *parts, "--interface", "tap-c")
    assert status == 2 and "no interface named 'tap-c'" in err and len(err.splitlines()) == 1


# --- bad input ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    status, _, err = lab("synth", "--out", folder / "s.pcapng", "--triggers", 60)
    assert status == 0, err
    tool("editcap", "-c", 150, folder / "s.pcapng", folder / "part.pcapng")
    return folder, sorted(folder.glob("part_*.pcapng"))


def test_bad_files_in_the_set_are_named_and_the_rest_is_kept(small):
    folder, parts = small
    notes = folder / "notes.txt"
    notes.write_text("not a capture\n")
    cut = folder / "cut.pcapng"
    cut.write_bytes(parts[1].read_bytes()[:-100])             # its last record is cut short
    kept = [parts[0], cut, *parts[2:]]
    status, out, err = lab("measure", "--pcap", notes, *kept, "--json")
    assert status == 0
    warnings = err.splitlines()
    assert len(warnings) == 2 and "Traceback" not in err
    assert str(notes) in warnings[0] and "not a pcap or pcapng file" in warnings[0]
    assert str(cut) in warnings[1] and "damaged" in warnings[1]
    doc = json.loads(out)
    cut_packets = json.loads(lab("info", "--pcap", cut, "--json")[1])["packets"]
    whole = json.loads(lab("info", "--pcap", parts[1], "--json")[1])["packets"]
    assert cut_packets == whole - 1
    # The good records are all measured: as the mergecap'd file of the readable records (mergecap
    # refuses a cut file, so editcap keeps the cut file's whole records for it).
    good = folder / "good.pcapng"
    tool("editcap", "-r", parts[1], good, f"1-{cut_packets}")
    reference = measured(mergecap(folder / "kept.pcapng", [parts[0], good, *parts[2:]]))
    assert_same_measurement({k: v for k, v in doc.items() if k != "skipped"}, reference)
    lost = doc["skipped"]
    assert lost["files_skipped"] == [{"file": str(notes), "error": lost["files_skipped"][0]["error"],
                                      "bytes": notes.stat().st_size}]
    assert [r["file"] for r in lost["reasons"]] == [str(cut)] and lost["records"] == 1
    assert lost["bytes"] == notes.stat().st_size + lost["reasons"][0]["bytes"]
    assert doc["files"][0]["error"].startswith(str(notes)) and doc["warnings"] == warnings_text(err)
    # lab info says the same.
    status, out, err = lab("info", "--pcap", notes, *kept, "--json")
    assert status == 0 and len(err.splitlines()) == 2
    assert json.loads(out)["skipped"]["files_skipped"][0]["file"] == str(notes)


def warnings_text(stderr: str) -> list[str]:
    return [line.removeprefix("lab measure: warning: ") for line in stderr.splitlines()]


def test_no_readable_file_is_one_line_and_exit_2(small):
    folder, _ = small
    (folder / "empty.pcap").write_bytes(b"")
    (folder / "text.pcap").write_text("hello\n")
    for command in ("measure", "info"):
        status, out, err = lab(command, "--pcap", folder / "empty.pcap", folder / "text.pcap")
        assert status == 2 and out == "" and len(err.splitlines()) == 1
        assert "none of the 2 files is a readable capture" in err and "Traceback" not in err
        status, out, err = lab(command, "--pcap", folder / "nothing-*.pcapng")
        assert status == 2 and len(err.splitlines()) == 1 and "nothing-*.pcapng" in err
