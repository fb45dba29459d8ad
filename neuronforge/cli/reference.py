"""The click command behind the typer app, for the docs site's generated CLI reference (docs/cli.md).

mkdocs-click documents a click command that it imports by module and attribute name; typer builds that command
on demand (`typer.main.get_command`). The help texts carry rich markup for the terminal (`[bold]...[/]`), which a
web page would show literally, so it is rendered to plain text here, the way typer renders it for `--help`.
"""

from __future__ import annotations

import click
import typer
from rich.text import Text

from neuronforge.cli import app


def _plain_help(command: click.Command) -> click.Command:
    """`command` and every subcommand, with rich markup taken out of their help texts (in place)."""
    if command.help:
        command.help = Text.from_markup(command.help).plain
    for param in command.params:
        help_text = getattr(param, "help", None)
        if help_text:
            param.help = Text.from_markup(help_text).plain  # type: ignore[attr-defined]
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
    return command


command = _plain_help(typer.main.get_command(app))
