"""Every subcommand's --help ends with examples that run as pasted from the repository
root: they are the help's last lines, no longer than a terminal's 80 columns (nothing
re-wraps them), and the files they name exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app
from finetune_cli.help_examples import EXAMPLES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(
    c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
)


def test_every_subcommand_has_examples() -> None:
    assert set(COMMANDS) == set(EXAMPLES)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_its_examples(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    assert lines[-len(EXAMPLES[command]) :] == [e.strip() for e in EXAMPLES[command]]
    assert lines[-len(EXAMPLES[command]) - 1].startswith("Examples (from the repository root")
    for example in EXAMPLES[command]:
        assert len(example) + 3 <= 80, example  # the help's indent included
        for path in re.findall(r"examples/[\w./-]+\.yaml", example):
            assert (ROOT / path).is_file(), path


def test_the_examples_use_real_commands() -> None:
    commands = set(COMMANDS)
    for lines in EXAMPLES.values():
        for line in lines:
            if line.startswith("finetune "):
                assert line.split()[1] in commands, line
