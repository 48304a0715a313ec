"""Processes that die with their parent, and telling whether a recorded owner is still alive.

A child asks the kernel for a signal when its parent exits (prctl PR_SET_PDEATHSIG), so that
a SIGKILLed `lab run` takes its engine, the engine's logger and the capture with it. A child
started with exec learns its parent's pid from WIRELAB_PARENT_PID (child_environment); a
forked child gets it as an argument. A parent already gone by the time the child asks is
caught by comparing getppid() with that pid.
"""
from __future__ import annotations

import ctypes
import os

PARENT_PID_ENV = "WIRELAB_PARENT_PID"
PR_SET_PDEATHSIG = 1                       # linux/prctl.h


def die_with_parent(parent_pid: int, signum: int) -> None:
    """Have the kernel send `signum` to this process when its parent, `parent_pid`, exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:         # it exited before we asked
        os.kill(os.getpid(), signum)


def die_with_parent_from_environment(signum: int) -> None:
    """die_with_parent for the parent named in WIRELAB_PARENT_PID, if any. The variable is
    taken out of the environment, so this process's own children do not inherit it."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if parent is not None:
        die_with_parent(int(parent), signum)


def child_environment() -> dict[str, str]:
    """The environment for a child that should die with this process."""
    return {**os.environ, PARENT_PID_ENV: str(os.getpid())}


def is_alive(pid: int) -> bool:
    """True while a process with this pid exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                # another user's process
        pass
    return True
