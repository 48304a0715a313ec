"""A bounded mutation fuzzer for `lab info` and `lab measure`.

    python benchmarks/fuzz_captures.py --runs 5000 [--seconds 1800] [--seed 0] [--keep DIR] [--json]

Seeds: `lab synth` captures in every protocol pair and both formats, the pcapng and libpcap peer
suites in tests/data, and a `lab run` capture when --with-run is given. Each mutant is a seed with
one to three mutations: bit flips, a cut at any byte, a block or record duplicated or removed,
and length or type fields (of the file's blocks and records, or 2- and 4-byte words inside the
packets) set to 0, 1 or all ones.

Each mutant goes to `lab info --pcap F --json` and `lab measure --pcap F --json`, each run in a
child forked from this warmed-up process (imports done once, so thousands of runs fit in minutes;
the child runs the CLI's own main(), as the console script does). A finding is a traceback on
stderr, an exit status other than 0 and 2, a run past --timeout (20 s), or a peak RSS over
--max-rss-mb (1024). Each finding's input is kept in --keep with the command and what happened.
Exit status 1 when there is any finding.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEER_SUITES = [REPO / "tests" / "data" / "pcapng-test-generator", REPO / "tests" / "data" / "libpcap-tests"]
SYNTH = [("wm", "binary"), ("wm", "fix"), ("itch50", "ouch42"), ("wm", "ouch42"), ("itch50", "binary")]
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
SPECIAL = (0, 1, 0xFFFFFFFF)


# -- the file's structure: spans of blocks (pcapng) or records (pcap), and their length/type fields --
def spans(data: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """([start, end) of each whole block or record, [(offset, width) of each length or type field]).
    A walk of its own, checking every length before it moves on; it stops at the first bad one."""
    blocks, fields = [], []
    if data[:4] in PCAP_MAGICS:
        order = PCAP_MAGICS[data[:4]]
        fields += [(16, 4), (20, 4)]                           # snaplen, linktype
        at = 24
        while at + 16 <= len(data):
            caplen = struct.unpack_from(order + "I", data, at + 8)[0]
            if at + 16 + caplen > len(data):
                break
            blocks.append((at, at + 16 + caplen))
            fields += [(at + 8, 4), (at + 12, 4)]              # caplen, len
            at += 16 + caplen
    elif data[:4] == PCAPNG_SHB and len(data) >= 12:
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        at = 0
        while at + 12 <= len(data):
            kind, length = struct.unpack_from(order + "II", data, at)
            if length < 12 or length % 4 or at + length > len(data):
                break
            blocks.append((at, at + length))
            fields += [(at, 4), (at + 4, 4), (at + length - 4, 4)]
            if kind == 6 and length >= 32:                     # EPB: captured and original lengths
                fields += [(at + 20, 4), (at + 24, 4)]
            at += length
    return blocks, fields


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """One to three mutations, and their names."""
    out = bytearray(data)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        blocks, fields = spans(bytes(out))
        kind = rng.choice(["flip", "cut", "duplicate", "remove", "field", "word"])
        if kind == "flip" and out:
            for _ in range(int(rng.integers(1, 9))):
                out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
        elif kind == "cut" and out:
            del out[int(rng.integers(len(out))):]
        elif kind in ("duplicate", "remove") and len(blocks) > 1:
            start, end = blocks[int(rng.integers(1, len(blocks)))]     # keep the file header
            out[start:end] = bytes(out[start:end]) * 2 if kind == "duplicate" else b""
        elif kind == "field" and fields:
            at, width = fields[int(rng.integers(len(fields)))]
            out[at:at + width] = (int(rng.choice(SPECIAL)) & (1 << 8 * width) - 1).to_bytes(width, "little")
        elif kind == "word" and len(out) > 64:
            width = int(rng.choice([2, 4]))
            at = int(rng.integers(24, len(out) - width))
            out[at:at + width] = (int(rng.choice(SPECIAL)) & (1 << 8 * width) - 1).to_bytes(width, "big")
        else:
            continue
        done.append(kind)
    return bytes(out), done


# -- running the CLI in a forked child ---------------------------------------------------------
def run_cli(argv: list[str], workdir: str, timeout: float) -> dict:
    """`lab ARGV` in a child forked from this process: exit status, stderr, peak RSS, seconds."""
    err_path = os.path.join(workdir, "stderr")
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:                                       # the child: the console script's main()
        code = 70
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(devnull, 1)
            os.dup2(err, 2)
            from lab.cli import main
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = start + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return {"hang": True, "seconds": round(time.perf_counter() - start, 1)}
        time.sleep(0.002)
    with open(err_path, "rb") as f:
        stderr = f.read().decode(errors="replace")
    return {"code": os.waitstatus_to_exitcode(status), "stderr": stderr, "rss_mb": usage.ru_maxrss / 1024,
            "seconds": round(time.perf_counter() - start, 3)}


def verdict(result: dict, max_rss_mb: float) -> str | None:
    """What is wrong with a run, or None."""
    if result.get("hang"):
        return f"hang past {result['seconds']} s"
    if "Traceback" in result["stderr"]:
        return "traceback: " + result["stderr"].strip().splitlines()[-1][:200]
    if result["code"] not in (0, 2):
        return f"exit status {result['code']}: {result['stderr'].strip()[:200]}"
    if result["code"] == 2 and len(result["stderr"].strip().splitlines()) != 1:
        return f"exit 2 with {len(result['stderr'].strip().splitlines())} lines on stderr"
    if result["rss_mb"] > max_rss_mb:
        return f"peak RSS {result['rss_mb']:.0f} MB"
    return None


def warm(path: str) -> None:
    """Run both commands here once, so that every child inherits their imports warm (5x faster)."""
    import contextlib
    import io

    from lab.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        for command in ("info", "measure"):
            main([command, "--pcap", path, "--json"])


def seeds(workdir: str, with_run: bool) -> dict[str, bytes]:
    """name -> bytes of each capture the mutants start from."""
    found = {}
    for md, orders in SYNTH:
        for file_format in ("pcapng", "pcap"):
            path = os.path.join(workdir, f"synth-{md}-{orders}.{file_format}")
            subprocess.run([sys.executable, "-m", "lab", "synth", "--out", path, "--triggers", "12", "--md", md,
                            "--orders", orders, "--format", file_format], check=True, capture_output=True)
            found[os.path.basename(path)] = Path(path).read_bytes()
    for suite in PEER_SUITES:
        for path in sorted(suite.rglob("*")):
            if path.is_file() and path.suffix in (".pcap", ".pcapng", ".ntar") and path.stat().st_size < 1 << 20:
                found[str(path.relative_to(REPO / "tests" / "data"))] = path.read_bytes()
    if with_run:
        path = os.path.join(workdir, "run.pcapng")
        subprocess.run([sys.executable, "-m", "lab", "run", "--strategy", "tcp-prefix", "--messages", "40",
                        "--out", path], check=True, capture_output=True)
        found["lab-run.pcapng"] = Path(path).read_bytes()
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000, help="mutants (each runs lab info and lab measure)")
    parser.add_argument("--seconds", type=float, default=3600, help="stop after this long, whatever --runs says")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="a run past this many seconds is a hang")
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    parser.add_argument("--keep", default="fuzz-findings", help="folder for each finding's input and report")
    parser.add_argument("--with-run", action="store_true", help="also start from a short `lab run` capture")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it too)")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="fuzz_")
    rng = np.random.default_rng(args.seed)
    findings, outcomes, kinds = [], {"info": {}, "measure": {}}, {}
    started = time.perf_counter()
    mutants = 0
    try:
        corpus = seeds(workdir, args.with_run)
        names = sorted(corpus)
        path = os.path.join(workdir, "mutant")
        warm(os.path.join(workdir, "synth-itch50-ouch42.pcapng"))
        while mutants < args.runs and time.perf_counter() - started < args.seconds:
            name = names[int(rng.integers(len(names)))]
            data, done = mutate(corpus[name], rng)
            mutants += 1
            for kind in done:
                kinds[kind] = kinds.get(kind, 0) + 1
            with open(path, "wb") as f:
                f.write(data)
            for command in ("info", "measure"):
                result = run_cli([command, "--pcap", path, "--json"], workdir, args.timeout)
                key = "hang" if result.get("hang") else str(result["code"])
                outcomes[command][key] = outcomes[command].get(key, 0) + 1
                problem = verdict(result, args.max_rss_mb)
                if problem:
                    os.makedirs(args.keep, exist_ok=True)
                    kept = os.path.join(args.keep, f"finding-{len(findings):04d}-{command}.bin")
                    Path(kept).write_bytes(data)
                    finding = {"command": f"lab {command} --pcap {kept} --json", "seed": name, "mutations": done,
                               "problem": problem, "stderr": result.get("stderr", "")[-2000:]}
                    Path(kept + ".json").write_text(json.dumps(finding, indent=2))
                    findings.append(finding)
            if mutants % 250 == 0:
                print(f"fuzz: {mutants} mutants, {len(findings)} findings, "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    report = {"mutants": mutants, "runs": sum(sum(v.values()) for v in outcomes.values()),
              "seconds": round(elapsed, 1), "mutants_per_s": round(mutants / elapsed, 1), "seed": args.seed,
              "seeds": len(names), "mutations": kinds, "exit_status": outcomes,
              "findings": len(findings), "kept_in": args.keep if findings else None,
              "problems": sorted({f["problem"] for f in findings})[:50],
              "peak_rss_mb_limit": args.max_rss_mb, "ok": not findings,
              "own_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
