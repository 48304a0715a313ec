"""Soak: `lab run` over and over for M minutes; every process sampled once a second; fail on growth.

    python benchmarks/soak.py --minutes 30 [--messages 20000] [--rate 400000] [--scenario modern-10g]
        [--md wm|itch50] [--orders binary|fix|ouch42] [--json]

Each run is `lab run` as a user starts it, at the engine's top MD rate (about 400k datagrams/s,
docs/engine.md; the run's feeder may deliver fewer, and the JSON gives what it delivered). Once a
second, every process of the run (the runner, its capture child, the engine, its logger and the
resource tracker) is sampled from /proc: RSS, open fds and threads, and so are the /dev/shm entries.

It fails (exit 1) when:
- a run fails, or leaves a process, a /dev/shm entry or a run folder behind;
- a process's peak RSS in the last third of the runs exceeds its peak in the first third by more
  than --rss-slack-mb (default 20 MB), or its peak fds or threads by more than 2;
- the engine's, the logger's or the resource tracker's RSS grows by more than the slack within
  one run (the median of its last quarter of samples against its second quarter).
The runner and its capture child hold the run's schedule and capture, so their RSS rises with the
run by design; for them only the peaks from run to run are compared.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COUNT_SLACK = 2          # fds and threads: a sample can land while a pipe or a helper thread is open
STEADY = ("engine", "logger", "resource tracker")     # no reason to grow while a run goes on
ROLES = (("engine.logger", "logger"), ("resource_tracker", "resource tracker"), ("-m engine", "engine"))


def descendants(root: int) -> list[int]:
    """The process tree under root (root included), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def role(pid: int, root: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if not argv:
        return None                                   # a zombie, or between fork and exec
    if pid == root:
        return "runner"
    for needle, name in ROLES:
        if needle in argv:
            return name
    return "capture" if " run " in f" {argv} " else argv[:40]


def sample(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return {"rss_kb": int(status["VmRSS"].split()[0]) if "VmRSS" in status else 0,
            "threads": int(status["Threads"]), "fds": fds}


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def run_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "wirelab-run-*")))


def within_run_growth(rss_kb: list[int]) -> int:
    """RSS growth of one process in one run: the median of its last quarter of samples less that of
    its second quarter (the first is start-up)."""
    quarter = len(rss_kb) // 4
    if quarter < 2:
        return 0
    return int(statistics.median(rss_kb[-quarter:]) - statistics.median(rss_kb[quarter:2 * quarter]))


def one_run(argv: list[str]) -> dict:
    """Start `lab run`, sample its processes once a second until it ends."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks: dict[str, dict] = {}
    series: dict[str, list[int]] = {}
    seen: set[int] = set()
    shm_peak = 0
    while child.poll() is None:
        for pid in descendants(child.pid):
            name, figures = role(pid, child.pid), sample(pid)
            if name is None or figures is None:
                continue
            seen.add(pid)
            peak = peaks.setdefault(name, {"rss_kb": 0, "threads": 0, "fds": 0})
            for key, value in figures.items():
                peak[key] = max(peak[key], value)
            series.setdefault(name, []).append(figures["rss_kb"])
        shm_peak = max(shm_peak, len(shm_entries()))
        time.sleep(1.0)
    out, err = child.communicate()
    time.sleep(1.0)
    alive = sorted(pid for pid in seen if os.path.exists(f"/proc/{pid}") and role(pid, -1) is not None)
    # what the run left: its segments and run folder carry the runner's pid (other jobs' are not its)
    left = sorted(name for name in shm_entries() if f"-{child.pid}." in name)
    left += sorted(folder for folder in run_folders() if f"wirelab-run-{child.pid}-" in folder)
    report = json.loads(out) if child.returncode == 0 else {}
    engine = report.get("engine", {})
    span_s = engine.get("md_span_ns", 0) / 1e9
    return {"returncode": child.returncode, "error": err.decode(errors="replace").strip()[-300:],
            "peaks": peaks, "shm_peak": shm_peak, "left_processes": alive, "left": left,
            "growth_kb": {name: within_run_growth(values) for name, values in series.items()}, "seconds": report.get("seconds"),
            "md_handled": engine.get("md_handled"),
            "md_per_s": round(engine["md_handled"] / span_s) if span_s else None}


def growth(runs: list[dict], slack_kb: int) -> tuple[dict, list[str]]:
    """Per process: first-third and last-third peaks, and what grew."""
    third = max(1, len(runs) // 3)
    head, tail = runs[:third], runs[-third:]
    table, failures = {}, []
    for name in sorted({name for run in runs for name in run["peaks"]}):
        def peak(part, key):
            values = [run["peaks"][name][key] for run in part if name in run["peaks"]]
            return max(values) if values else None
        row = {f"{edge}_{key}": peak(part, key) for edge, part in (("start", head), ("end", tail))
               for key in ("rss_kb", "fds", "threads")}
        table[name] = row
        if None in row.values():
            continue
        row["most_growth_in_a_run_kb"] = max(run["growth_kb"].get(name, 0) for run in runs)
        if row["end_rss_kb"] - row["start_rss_kb"] > slack_kb:
            failures.append(f"{name}: peak RSS grew {row['start_rss_kb']} -> {row['end_rss_kb']} kB")
        if name in STEADY and row["most_growth_in_a_run_kb"] > slack_kb:
            failures.append(f"{name}: RSS grew {row['most_growth_in_a_run_kb']} kB within one run")
        for key in ("fds", "threads"):
            if row[f"end_{key}"] > row[f"start_{key}"] + COUNT_SLACK:
                failures.append(f"{name}: peak {key} grew {row[f'start_{key}']} -> {row[f'end_{key}']}")
    return table, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--messages", type=int, default=200_000, help="MD datagrams per run")
    parser.add_argument("--rate", type=float, default=400_000, help="MD datagrams per second asked of each run")
    parser.add_argument("--scenario", default="modern-10g")
    parser.add_argument("--strategy", default="tcp-prefix", choices=("none", "tcp-prefix"))
    parser.add_argument("--md", default="wm", choices=("wm", "itch50"))
    parser.add_argument("--orders", default="binary", choices=("binary", "fix", "ouch42"))
    parser.add_argument("--rss-slack-mb", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it too)")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="soak_")
    shm_before = shm_entries()
    runs, failures = [], []
    deadline = time.monotonic() + args.minutes * 60
    started = time.time()
    try:
        while time.monotonic() < deadline:
            out = os.path.join(workdir, f"run{len(runs)}.pcapng")
            run = one_run([sys.executable, "-m", "lab", "run", "--scenario", args.scenario, "--strategy",
                           args.strategy, "--messages", str(args.messages), "--rate", str(args.rate), "--md",
                           args.md, "--orders", args.orders, "--out", out, "--json"])
            for leftover in glob.glob(os.path.join(workdir, "*")):
                os.remove(leftover)
            runs.append(run)
            index = len(runs)
            if run["returncode"] != 0:
                failures.append(f"run {index} exited {run['returncode']}: {run['error']}")
            if run["left"] or run["left_processes"]:
                failures.append(f"run {index} left {run['left']} and processes {run['left_processes']}")
            print(f"soak: run {index} in {run['seconds'] and round(run['seconds'], 1)} s, "
                  f"{run['md_per_s']} MD/s, {int((deadline - time.monotonic()) // 60)} min left", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table, grew = growth(runs, int(args.rss_slack_mb * 1024))
    failures += grew
    rates = [run["md_per_s"] for run in runs if run["md_per_s"]]
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "minutes": args.minutes,
        "runs": len(runs), "messages_per_run": args.messages, "rate_asked": args.rate,
        "md_per_s_delivered_median": round(statistics.median(rates)) if rates else None,
        "scenario": args.scenario, "strategy": args.strategy, "md": args.md, "orders": args.orders,
        "processes": table, "shm_entries_before": len(shm_before), "shm_entries_after": len(shm_entries()),
        "runs_failed": sum(run["returncode"] != 0 for run in runs),
        "shm_peak_during_runs": max((run["shm_peak"] for run in runs), default=0),
        "failures": failures, "ok": not failures,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
