"""mkdocs hook: the CLI reference page (docs/cli.md) is generated from the typer app at every build, never copied.

It is what `typer neuronforge.cli utils docs` prints (typer's own Markdown generator, `typer.cli.get_docs_for_click`),
one heading level down, with the app's rich markup rendered as HTML, the way `--help` renders it in a terminal.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- generated: neuronforge CLI reference -->"


def cli_reference() -> str:
    """Markdown for every command and option of `neuronforge`, in the order `neuronforge --help` lists them."""
    import typer
    from typer.cli import MARKUP_MODE_KEY, get_docs_for_click

    from neuronforge.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, obj={MARKUP_MODE_KEY: app.rich_markup_mode})
    return get_docs_for_click(obj=command, ctx=ctx, name="neuronforge", indent=1)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "cli.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/cli.md lost its marker {MARKER!r}: the CLI reference would be empty")
    return markdown.replace(MARKER, cli_reference())
