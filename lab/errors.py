"""Errors that mean "the user gave us something bad" (a file, a flag, a scenario).

The CLI turns any of these into one line on stderr and exit status 2. Anything
else is a bug in wirelab and is allowed to show its traceback.
"""
from engine.protocol.errors import ProtocolError
from simulator.errors import SimulatorError


class LabError(Exception):
    """Bad input to the lab: a file it cannot use, a flag value it cannot honour."""


USER_ERRORS: tuple[type[BaseException], ...] = (LabError, SimulatorError, ProtocolError, OSError)
