"""The command line as a whole: workflow order in --help, one spelling per flag, no traceback on --help."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.testing import CliRunner

from neuronforge.cli import WORKFLOW, app

# Spellings retired in favour of --tp-degree, --overwrite, --seq-len / --calib-seq-len / --eval-seq-len.
RETIRED = {"--tp", "--force", "--seqlen", "--calib-seqlen", "--neuron-seq-len"}


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every command and sub-command (typer vendors its own click, so groups are recognised by `.commands`)."""
    found = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if hasattr(command, "commands"):
            found.update(_commands(command, f"{prefix}{name} "))
    return found


def test_help_lists_commands_in_workflow_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = re.findall(r"^│ ([a-z][a-z-]+) ", result.output, flags=re.M)
    assert listed == list(WORKFLOW)


def test_every_flag_has_one_spelling() -> None:
    root = typer.main.get_command(app)
    spellings: dict[str, set[str]] = {}
    for path, command in _commands(root).items():
        for param in command.params:
            for flag in (f for f in (*param.opts, *param.secondary_opts) if f.startswith("--")):
                assert flag not in RETIRED, f"`neuronforge {path}` still spells {flag}"
                spellings.setdefault(param.name or "", set()).add(flag.replace("--no-", "--", 1))
    # A parameter name maps to one flag everywhere (e.g. tp_degree is always --tp-degree).
    assert {name: flags for name, flags in spellings.items() if len(flags) > 1} == {}
