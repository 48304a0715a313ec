"""Byte-identical outputs of a fixed set of commands: the proof that a refactor changed nothing.

tests/data/golden/ holds what these commands wrote before the protocol modules (issue 14):
`lab synth` (pcap and pcapng, binary and FIX, two seeds, with --truth), `lab simulate --json`
and `lab compare --json` for every built-in scenario, and `lab measure --json --csv` on each
synth capture. Text outputs are kept whole; a capture is kept as its SHA-256.

Regenerate only when an output is meant to change, and say why in the commit:
    python tests/lab/test_golden_outputs.py --write
"""
import contextlib
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

from lab.cli import main
from simulator.scenario import builtin_names

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
TRIGGERS = 150
SYNTH = [(fmt, orders, seed) for fmt in ("pcap", "pcapng") for orders in ("binary", "fix") for seed in (1, 2)]


def commands() -> list[tuple[str, list[str], list[str]]]:
    """(name, lab arguments, files it writes), in the order they must run."""
    out = []
    for fmt, orders, seed in SYNTH:
        capture = f"{orders}-{seed}.{fmt}"
        out.append((f"synth-{orders}-{seed}-{fmt}",
                    ["synth", "--out", capture, "--triggers", str(TRIGGERS), "--format", fmt, "--orders", orders,
                     "--seed", str(seed), "--truth", f"{capture}.truth.csv", "--json"],
                    [capture, f"{capture}.truth.csv"]))
    for scenario in builtin_names():
        out.append((f"simulate-{scenario}", ["simulate", scenario, "--json"], []))
        out.append((f"compare-{scenario}", ["compare", "--scenario", scenario, "--messages", "300", "--json"], []))
    for fmt, orders, seed in SYNTH:
        capture = f"{orders}-{seed}.{fmt}"
        out.append((f"measure-{orders}-{seed}-{fmt}",
                    ["measure", "--pcap", capture, "--json", "--csv", f"{capture}.rows.csv"], [f"{capture}.rows.csv"]))
    return out


def run_all(workdir: Path) -> dict[str, bytes]:
    """Every command run in-process in `workdir`: {output name: its bytes}."""
    outputs = {}
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for name, args, files in commands():
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
                status = main(args)
            assert status == 0, f"lab {' '.join(args)} exited {status}"
            outputs[f"{name}.stdout"] = stdout.getvalue().encode()
            for written in files:
                outputs[written] = (workdir / written).read_bytes()
    finally:
        os.chdir(previous)
    return outputs


def _is_capture(name: str) -> bool:
    return name.endswith((".pcap", ".pcapng"))


def _expected() -> dict[str, bytes | str]:
    """The saved outputs: text whole, captures as their SHA-256 (hex)."""
    digests = json.loads((GOLDEN / "captures.sha256.json").read_text())
    return {name: digests[name] if _is_capture(name) else (GOLDEN / name).read_bytes()
            for name in json.loads((GOLDEN / "index.json").read_text())}


def test_every_output_is_byte_identical_to_the_saved_one(tmp_path):
    expected = _expected()
    got = run_all(tmp_path)
    assert sorted(got) == sorted(expected)
    for name, data in got.items():
        if _is_capture(name):
            assert hashlib.sha256(data).hexdigest() == expected[name], name
        else:
            assert data == expected[name], name


def write_golden() -> None:
    import tempfile
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        outputs = run_all(Path(workdir))
    digests = {}
    for name, data in outputs.items():
        if _is_capture(name):
            digests[name] = hashlib.sha256(data).hexdigest()
        else:
            (GOLDEN / name).write_bytes(data)
    (GOLDEN / "captures.sha256.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    (GOLDEN / "index.json").write_text(json.dumps(sorted(outputs), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/lab/test_golden_outputs.py --write")
    write_golden()
    pytest.main([__file__, "-q"])
