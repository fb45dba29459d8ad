"""The `neuronforge` command line: every command module imported here and wired in one block, in workflow order.

This package is the only one that imports typer, and nothing in neuronforge imports it.
"""

from __future__ import annotations

import typer
from typer._click import Context  # typer >= 0.29 bundles its own click: TyperGroup's methods take its Context

from neuronforge.cli import compile, doctor, emulate, evaluate, model, plan, quantize, run, sagemaker
from neuronforge.cli.app import App, FriendlyGroup, console, stop_on_sigterm
from neuronforge.version import __version__

HELP = (
    "Quantize a Hugging Face causal LM and ship it to AWS Inferentia2/Trainium.\n\n"
    "[bold]Stage 1, GPU (or CPU for small models):[/] sensitivity analysis + AutoRound write a fake-quantized "
    "bf16 checkpoint whose weights sit exactly on NxD's int8/fp8 grid, plus the list of blocks that must stay "
    "bf16 (modules_to_not_convert).\n\n"
    "[bold]Stage 2, Neuron (inf2/trn1):[/] NxD Inference compiles that checkpoint with per-channel int8/fp8 "
    "weights and an fp8 KV cache; the result is packaged for a SageMaker ml.inf2 endpoint.\n\n"
    "Without Neuron hardware, the CPU reference path emulates Neuron numerics bit-faithfully."
)

# The order a user follows; `neuronforge --help` lists commands and groups in it.
WORKFLOW = (
    "model",
    "quantize",
    "emulate",
    "quantize-nxd",
    "evaluate",
    "plan",
    "neuron-config",
    "compile",
    "package",
    "run",
    "config",
    "sagemaker",
    "invoke",
    "doctor",
)


class WorkflowGroup(FriendlyGroup):
    """Typer lists single commands before groups; list everything in WORKFLOW order instead."""

    def list_commands(self, ctx: Context) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda name: WORKFLOW.index(name))


app = App(help=HELP, rich_markup_mode="rich", cls=WorkflowGroup)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"neuronforge {__version__}")
        raise typer.Exit()


# Wired in WORKFLOW order: model -> quantize -> emulate -> evaluate -> plan -> neuron-config -> compile -> package
# -> run (all of it) -> sagemaker -> doctor.
app.add_typer(model.model_cli, name="model")
app.command("quantize")(quantize.quantize_command)
app.command("emulate")(emulate.emulate_command)
app.command("quantize-nxd")(emulate.quantize_nxd_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("plan")(plan.plan_command)
app.command("neuron-config")(compile.neuron_config_command)
app.command("compile")(compile.compile_command)
app.command("package")(sagemaker.package_command)
app.command("run")(run.run_command)
app.add_typer(run.config_cli, name="config")
app.add_typer(sagemaker.sagemaker_cli, name="sagemaker")
app.command("invoke")(sagemaker.invoke_command)
app.command("doctor")(doctor.doctor_command)


def main() -> None:
    stop_on_sigterm()
    app()
