"""`lab measure` as a user runs it: exact latencies from `lab synth`, exports, bad input.

Most cases run the CLI's main() in-process (same parser, same error handling,
no interpreter start-up); a few run `python -m lab` to see exactly what a user sees.
"""
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lab.cli import main
from lab.synth import TRUTH_COLUMNS, SynthConfig, synthesize, write_capture, write_truth

TRIGGERS = 400
SUMMARY = {"count", "min", "mean", "p50", "p90", "p99", "p99_9", "p99_99", "max"}
CASES = [("pcap", "hardware", "binary"), ("pcap", "software", "binary"), ("pcapng", "hardware", "binary"),
         ("pcapng", "software", "binary"), ("pcapng", "hardware", "fix")]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """One synth capture per (format, convention, order protocol), with its truth CSV.
    The first is written by `lab synth` itself, the others through its API (faster)."""
    root = tmp_path_factory.mktemp("synth")
    made = {}
    for fmt, convention, orders in CASES:
        out, truth = root / f"{convention}-{orders}.{fmt}", root / f"{convention}-{orders}-{fmt}.csv"
        if not made:
            result = subprocess.run(
                [sys.executable, "-m", "lab", "synth", "--out", out, "--triggers", str(TRIGGERS), "--format", fmt,
                 "--convention", convention, "--orders", orders, "--seed", "3", "--truth", truth],
                capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
        else:
            synthesis = synthesize(SynthConfig(triggers=TRIGGERS, seed=3, order_format=orders))
            write_capture(synthesis, str(out), fmt, convention)
            write_truth(synthesis, str(truth))
        made[fmt, convention, orders] = (out, truth)
    return made


@pytest.fixture
def lab_main(capsys):
    """Run `lab ARGS` in-process: (exit status, stdout, stderr)."""
    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:          # argparse usage errors
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def one_line_error(result):
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("fmt,convention,orders", CASES)
def test_synth_then_measure_recovers_every_latency_exactly(lab, lab_main, captures, tmp_path, fmt, convention,
                                                           orders):
    capture, truth_csv = captures[fmt, convention, orders]
    out = tmp_path / "measured.csv"
    run = lab if (fmt, convention, orders) == CASES[0] else lab_main      # once as a real process
    result = run("measure", "--pcap", capture, "--convention", convention, "--line-rate", "10Gbps",
                 "--csv", out, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["convention"] == convention
    assert (doc["orders"], doc["matched"], doc["unmatched_orders"], doc["duplicates"]) == (TRIGGERS, TRIGGERS, 0, 0)
    assert doc["md_messages"] == doc["matched"] + doc["unmatched_md"]
    truth = pd.read_csv(truth_csv).sort_values("md_seq").reset_index(drop=True)
    measured = pd.read_csv(out).sort_values("md_seq").reset_index(drop=True)
    for column in TRUTH_COLUMNS:
        assert measured[column].tolist() == truth[column].tolist(), column
    ttt = truth["tick_to_trade_ns"].to_numpy()
    assert doc["tick_to_trade_ns"]["min"] == ttt.min() and doc["tick_to_trade_ns"]["max"] == ttt.max()
    assert doc["tick_to_trade_ns"]["p50"] == np.sort(ttt)[TRIGGERS // 2 - 1]      # nearest rank 200 of 400


def test_json_keys_and_table(lab_main, captures):
    capture, _ = captures["pcapng", "hardware", "binary"]
    doc = json.loads(lab_main("measure", "--pcap", capture, "--json").stdout)
    assert {"packets", "md_messages", "orders", "matched", "unmatched_md", "unmatched_orders", "duplicates",
            "convention", "tick_to_trade_ns"} <= set(doc)
    assert set(doc["tick_to_trade_ns"]) == SUMMARY
    assert doc["convention"] == "hardware" and "skipped" not in doc
    table = lab_main("measure", "--pcap", capture)
    assert table.returncode == 0
    assert "hardware" in table.stdout and "p99_99" in table.stdout and "order last-byte times need --line-rate" \
        in table.stdout


def test_exports_are_owner_only(lab_main, captures, tmp_path):
    capture, _ = captures["pcap", "hardware", "binary"]
    files = {flag: tmp_path / name for flag, name in (("--csv", "t.csv"), ("--hgrm", "t.hgrm"), ("--plot", "t.png"))}
    result = lab_main("measure", "--pcap", capture, *[x for pair in files.items() for x in pair])
    assert result.returncode == 0, result.stderr
    for path in files.values():
        assert path.stat().st_mode & 0o777 == 0o600
    assert files["--plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hgrm = files["--hgrm"].read_text().splitlines()
    assert hgrm[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert f"TotalCount     = {TRIGGERS:12.3f}]" in hgrm[-2]


def test_matching_modes(lab_main, captures):
    binary, _ = captures["pcapng", "hardware", "binary"]
    fix, _ = captures["pcapng", "hardware", "fix"]
    by_tag = json.loads(lab_main("measure", "--pcap", fix, "--match", "fix-tag:9001", "--json").stdout)
    assert by_tag["matched"] == TRIGGERS and by_tag["match"] == "fix-tag:9001"
    wrong_tag = json.loads(lab_main("measure", "--pcap", fix, "--match", "fix-tag:11", "--json").stdout)
    assert wrong_tag["matched"] == 0 and wrong_tag["unmatched_orders"] == TRIGGERS   # ClOrdID is no MD seq
    assert len(wrong_tag["misses"]["unmatched_orders"]) == 100                       # listed, at most 100
    near = json.loads(lab_main("measure", "--pcap", binary, "--match", "nearest", "--json").stdout)
    assert near["match"] == "nearest"
    assert near["matched"] + near["duplicates"] + near["unmatched_orders"] == TRIGGERS


@pytest.mark.parametrize("args,says", [
    (["--line-rate", "10Gbpz"], "--line-rate"),
    (["--line-rate", "-5Gbps"], "--line-rate"),
    (["--convention", "software"], "needs --line-rate"),
    (["--convention", "atomic"], "--convention"),
    (["--match", "fix-tag:x"], "--match"),
    (["--match-window", "soon"], "--match-window"),
    (["--match", "closest"], "--match"),
    (["--md-flow", "239.1.1.1"], "--md-flow"),
    (["--plot", "t.jpg"], "PNG"),
])
def test_bad_flags_exit_2_with_one_line(lab_main, captures, args, says):
    capture, _ = captures["pcap", "hardware", "binary"]
    assert says in one_line_error(lab_main("measure", "--pcap", capture, *args))


def test_missing_pcap_flag(lab):
    assert "--pcap" in one_line_error(lab("measure"))                   # as a real process


def test_parquet_without_pyarrow_is_a_clear_error(lab_main, captures, tmp_path):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed here: Parquet is written")
    except ImportError:
        pass
    capture, _ = captures["pcap", "hardware", "binary"]
    assert "pyarrow" in one_line_error(lab_main("measure", "--pcap", capture, "--parquet", tmp_path / "t.parquet"))


def pcap_header(linktype=1):
    return struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype)


@pytest.mark.parametrize("name,content", [
    ("empty", b""),
    ("wrong-magic", b"\x00\x01\x02\x03" * 10),
    ("truncated-header", pcap_header()[:20]),
    ("garbage", bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8))),
])
def test_unreadable_files_exit_2_with_one_line(lab, lab_main, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    run = lab if name == "garbage" else lab_main                         # once as a real process
    assert str(path) in one_line_error(run("measure", "--pcap", path, "--json"))


def test_missing_file(lab_main, tmp_path):
    assert "nope.pcap" in one_line_error(lab_main("measure", "--pcap", tmp_path / "nope.pcap"))


def test_damaged_tail_keeps_the_good_packets(lab_main, captures, tmp_path):
    capture, _ = captures["pcap", "hardware", "binary"]
    data = capture.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-30])                               # the last record loses its end
    whole = json.loads(lab_main("measure", "--pcap", capture, "--json").stdout)
    result = lab_main("measure", "--pcap", cut, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["packets"] == whole["packets"] - 1
    assert doc["skipped"]["records"] == 1 and doc["skipped"]["bytes"] > 0
    assert doc["skipped"]["reasons"][0]["reason"]
    assert doc["matched"] == whole["matched"]                # the last frame is a FIN, no order lost


def test_garbage_payloads_and_odd_stamps_are_reported_not_fatal(lab_main, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "analysis"))
    from wirecap import md_frame, new_order, order_frame, syn_frame, write_pcap
    rng = np.random.default_rng(9)
    junk = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    packets = [(5_000, syn_frame()), (6_000, md_frame(1)), (4_000, md_frame(2)),     # stamps go backwards
               (7_000, order_frame(junk, 0)), (8_000, order_frame(new_order(1, 1), 64)),
               (9_000, junk[:10])]                                                    # not even Ethernet
    path = tmp_path / "odd.pcap"
    write_pcap(path, packets)
    result = lab_main("measure", "--pcap", path, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["md_messages"] == 2 and doc["orders"] == 0 and doc["non_monotonic"] == 1
    assert doc["tcp"]["framing_errors"][0]["offset"] < 8          # the junk order's header
    assert doc["undecoded"] == {"truncated header": 1}


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_fix_capture_of_one_trigger_measures_in_either_format(tmp_path, lab_main, fmt):
    """A FIX capture written as pcap crashed in fix_tag_values (issue 16, found 1): the reply
    flow holds a `38=` but no NewOrderSingle. Both formats give the truth's latency."""
    synthesis = synthesize(SynthConfig(triggers=1, order_format="fix"))
    out, truth = tmp_path / f"one.{fmt}", tmp_path / "truth.csv"
    write_capture(synthesis, str(out), fmt, "hardware")
    write_truth(synthesis, str(truth))
    result = lab_main("measure", "--pcap", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = pd.read_csv(truth)["tick_to_trade_ns"].tolist()
    assert report["matched"] == 1 and report["unmatched_orders"] == 0
    assert report["tick_to_trade_ns"]["min"] == expected[0]
