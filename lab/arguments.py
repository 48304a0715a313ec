"""argparse value types shared by the subcommands: a bad value is one usage line, exit 2."""
from __future__ import annotations

import argparse
import math


def bounded(convert, low=None, high=None, what: str = "a number"):
    """A type that converts with `convert` (int, float) and checks low <= value <= high."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and value < low) \
                or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{text!r}: must be {span}")
        return value
    parse.__name__ = what
    return parse


positive_int = bounded(int, 1, what="a whole number")
