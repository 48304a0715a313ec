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


def comma_list(choices=None, what: str = "names"):
    """A type for "a,b,c": the names in order, each one of `choices` when given."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if choices is not None and name not in choices]
        if unknown or not names:
            hint = f"choose from {', '.join(choices)}" if choices is not None else f"give {what} separated by commas"
            raise argparse.ArgumentTypeError(f"{text!r}: {hint}")
        return names
    parse.__name__ = what
    return parse
