"""The CLI reference (docs/cli.md), generated from the parsers themselves so it cannot drift.

    python -m lab.clidoc > docs/cli.md

A test checks that docs/cli.md is exactly what this prints.
"""
from __future__ import annotations

import argparse

from lab.cli import build_parser

HEADER = """# CLI reference

Generated from the `lab` parsers by `python -m lab.clidoc > docs/cli.md`; a test keeps it
in step. Every subcommand prints a readable table by default and JSON with `--json`. Exit
status is 0 on success and 2 on bad input, with one line on stderr.
"""


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%%", "%")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += f" (one of: {', '.join(map(str, action.choices))})"
    return text


def _default(action: argparse.Action) -> str:
    if action.required or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    value = action.default
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    return f"`{value}`" if str(value) else ""


def render() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    out = [HEADER]
    out.append("| command | what it does |\n|---|---|")
    out += [f"| [`lab {name}`](#lab-{name}) | {_cell(helps.get(name, ''))} |" for name in commands.choices]
    for name, sub in commands.choices.items():
        out.append(f"\n## lab {name}\n")
        if sub.description:
            out.append(sub.description.replace("%%", "%") + "\n")
        usage = " ".join(sub.format_usage().split())
        out.append(f"```\n{usage.removeprefix('usage: ')}\n```\n")
        rows = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        if rows:
            out.append("| argument | default | meaning |\n|---|---|---|")
            for action in rows:
                flag = ", ".join(action.option_strings) or action.dest
                if action.metavar and action.option_strings:
                    flag += f" {action.metavar}"
                out.append(f"| `{_cell(flag)}`{' (required)' if action.required and action.option_strings else ''}"
                           f" | {_default(action)} | {_cell(_help(action))} |")
        if sub.epilog:
            out.append("\n" + sub.epilog.replace("%%", "%"))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
