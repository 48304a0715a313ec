"""benchmarks/bench_engine.py refuses garbage flags before it starts anything: one line, exit status 2."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"


@pytest.mark.parametrize("flags, says", [
    (["--rounds", "0"], "--rounds must be a finite number > 0"),
    (["--messages", "-5"], "--messages must be a finite number > 0"),
    (["--throughput-messages", "0"], "--throughput-messages must be a finite number > 0"),
    (["--rate", "nan"], "--rate must be a finite number > 0"),
    (["--rate", "inf"], "--rate must be a finite number > 0"),
    (["--rounds", "two"], "invalid int value: 'two'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flag_is_one_line_and_status_2(flags, says):
    done = subprocess.run([sys.executable, str(BENCH), *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("bench_engine.py: error: ")
