"""docs/cli.md is the reference the parsers generate: regenerate it with `python -m lab.clidoc > docs/cli.md`."""
from pathlib import Path

from lab.cli import COMMANDS
from lab.clidoc import render

DOC = Path(__file__).parents[2] / "docs" / "cli.md"


def test_the_cli_reference_is_generated_from_the_parsers():
    assert DOC.read_text() == render(), "docs/cli.md is stale: run `python -m lab.clidoc > docs/cli.md`"


def test_every_command_and_flag_is_documented():
    text = render()
    for name in COMMANDS:
        assert f"\n## lab {name}\n" in text
    assert "`--telemetry RUN.tel`" in text and "`--strategy` (required)" in text
