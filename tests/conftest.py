import ctypes
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import settings

# Property tests (tests/properties) run the same examples on every run, and write no example
# database into the tree; HYPOTHESIS_PROFILE=explore draws new ones each run to hunt for bugs
# (with PROPERTY_EXAMPLES=N, N times as many: tests/properties/wire_mutations.py).
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, database=None, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def lab():
    """Run the `lab` CLI in a subprocess, as a user would. Returns CompletedProcess."""
    def run(*args, cwd=None):
        return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=300)
    return run


TSHARK_ENVIRONMENT_NOTE = 'Running as user "root" and group "root". This could be dangerous.'


@pytest.fixture
def tshark_fields():
    """tshark -T fields rows of a file; asserts tshark printed no warning about the file.
    Skips the test where tshark is not installed (.ci/run installs it)."""
    def fields_of(path, *fields):
        if shutil.which("tshark") is None:
            pytest.skip("tshark is not installed")
        result = subprocess.run(["tshark", "-r", str(path), "-T", "fields"]
                                + [arg for f in fields for arg in ("-e", f)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        # The root note is about how tshark runs here, not about the file.
        warnings = [line for line in result.stderr.splitlines() if line and line != TSHARK_ENVIRONMENT_NOTE]
        assert warnings == []
        return [line.split("\t") for line in result.stdout.splitlines()]
    return fields_of


CANNOT_DROP_NET_RAW = 77


@pytest.fixture
def drop_net_raw():
    """A preexec_fn that takes CAP_NET_RAW out of the bounding set, so the exec'd child lacks it even
    as root; it exits CANNOT_DROP_NET_RAW (77) where that is not allowed. None when not root."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_NET_RAW = 24, 13

    def drop():
        if libc.prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0:
            os._exit(CANNOT_DROP_NET_RAW)
    return drop
