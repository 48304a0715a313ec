import subprocess
import sys

import pytest


@pytest.fixture
def lab():
    """Run the `lab` CLI in a subprocess, as a user would. Returns CompletedProcess."""
    def run(*args, cwd=None):
        return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=300)
    return run
