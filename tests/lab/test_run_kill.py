"""`lab run` killed outright, or started in the background by a script: nothing it started outlives
it, and what a killed run left is swept by the next one without touching a live run's."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.queues import HEADER_BYTES, MAGIC_QUEUE, OWNER_OFFSET, PREFIX, Queue, sweep_stale_segments
from lab.run.runner import sweep_stale_runs

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="lab run captures on lo with AF_PACKET, which needs root")


def descendants(pid: int) -> set[int]:
    """Every process below pid, read from /proc/<pid>/task/*/children."""
    found, todo = set(), [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = {int(p) for p in children.read_text().split()}
            except OSError:
                continue
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_folders(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"wirelab-run-{pid}-*"))


@needs_root
def test_sigkill_of_lab_run_takes_every_child_with_it_and_the_next_run_sweeps(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "lab", "run", "--strategy", "none", "--messages", "400",
                            "--out", str(tmp_path / "r.pcapng")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    segments = f"{PREFIX}lab-run-{run.pid}."
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while not Path(f"/dev/shm/{segments}md").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)                                          # connected and trading; the logger is up
        children = descendants(run.pid)
        assert len(children) >= 3, children                      # capture, engine, logger (+ trackers)
        run.kill()
        run.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
        assert list(Path("/dev/shm").glob(f"{segments}*")) == []    # the engine removed its own
        sweep_stale_runs()                                           # what `lab run` does first
        assert run_folders(run.pid) == []
    finally:
        run.kill()
        kill_all(descendants(run.pid) | children)
        for leftover in Path("/dev/shm").glob(f"{segments}*"):
            leftover.unlink(missing_ok=True)
        for folder in run_folders(run.pid):
            shutil.rmtree(folder, ignore_errors=True)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_sweep_removes_only_segments_whose_owner_is_gone():
    name = f"sweep-{os.getpid()}"
    live = Queue(f"{name}.live", "<u8", 8)
    dead = Path(f"/dev/shm/{PREFIX}{name}.dead")
    try:
        header = bytearray(HEADER_BYTES + 8 * 64)             # as a killed engine leaves its queue
        struct.pack_into("<Q", header, OWNER_OFFSET, dead_pid())
        struct.pack_into("<5Q", header, 0, MAGIC_QUEUE, 8, 64, 8, 0)
        fd = os.open(dead, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(header)
        removed = sweep_stale_segments()
        assert dead.name in removed and not dead.exists()
        assert Path(f"/dev/shm/{PREFIX}{name}.live").exists()
        assert os.stat(f"/dev/shm/{PREFIX}{name}.live").st_mode & 0o777 == 0o600
    finally:
        live.close()
        dead.unlink(missing_ok=True)


def test_the_sweep_removes_only_run_folders_whose_runner_is_gone():
    gone = Path(tempfile.mkdtemp(prefix=f"wirelab-run-{dead_pid()}-"))
    mine = Path(tempfile.mkdtemp(prefix=f"wirelab-run-{os.getpid()}-"))
    try:
        (gone / "lo.pcapng").write_bytes(b"")
        sweep_stale_runs()
        assert not gone.exists() and mine.exists()
    finally:
        shutil.rmtree(gone, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


@needs_root
def test_lab_run_in_the_background_of_a_script_finishes(tmp_path):
    pcap = tmp_path / "run.pcapng"
    script = f"{sys.executable} -m lab run --strategy none --messages 20 --out {pcap} & wait $!"
    shell = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        _out, err = shell.communicate(timeout=60)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.returncode == 0, err
    assert pcap.stat().st_size > 0
