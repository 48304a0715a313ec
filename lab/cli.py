"""The `lab` command: one subcommand per job, each in lab/commands/<name>.py.

Every subcommand prints a readable table by default and JSON with --json. Exit
status is 0 on success and 2 on bad input, with one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lab.errors import USER_ERRORS

# Subcommand name -> module in lab.commands. Each module has register(subparsers)
# and run(args) -> int.
COMMANDS = {
    "scenarios": "scenarios",
    "simulate": "simulate",
    "compare": "compare",
    "demo": "demo",
    "synth": "synth",
    "info": "info",
    "measure": "measure",
    "run": "run",
    "timekeeper": "timekeeper",
    "engine": "engine",
    "replay": "replay",
    "protocols": "protocols",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints usage + message)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="lab",
        description="wirelab: wire-level tick-to-trade measurement and speculative-send simulation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(f"lab.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `lab ... | head`: an OSError, but not the user's mistake
        return 0
    except USER_ERRORS as exc:
        print(f"lab {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130


def describe(exc: BaseException) -> str:
    """One line for a user error; OSError gets its file name and reason."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
