"""`neuronforge doctor`: what this host can do, each gap with a fix."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from neuronforge.cli.app import console
from neuronforge.cli.options import JsonOpt, model_option, parse_path_text, preset_option
from neuronforge.core.presets import apply_preset
from neuronforge.doctor import as_json as checks_json
from neuronforge.doctor import capabilities, diagnose
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.quantize.api import QuantizeSettings


def doctor_command(
    model: str = typer.Option(
        "smollm2", "--model", parser=parse_path_text, help="model whose size to check disk and memory against"
    ),
    out: str = typer.Option("runs", "--out", parser=parse_path_text, help="where runs will write (disk check)"),
    as_json: JsonOpt = False,
    preset: str | None = preset_option(QuantizeSettings),
    nsamples: int | None = model_option(QuantizeSettings, "nsamples", default_text="from --preset"),
    calib_seq_len: int | None = model_option(QuantizeSettings, "calib_seq_len", default_text="from --preset"),
) -> None:
    """Report what this host can do: CUDA GPU, Neuron devices and SDK, AWS credentials/region, disk, memory.

    Memory is sized for the calibration budget you will quantize with (--preset/--nsamples/--calib-seq-len)."""
    try:
        budget = apply_preset({"preset": preset, "nsamples": nsamples, "calib_seq_len": calib_seq_len}, "gpu")
    except ValueError as exc:
        raise NeuronforgeError(str(exc), "pick a preset from `neuronforge quantize --help`") from None
    checks, note = diagnose(model, Path(out), budget["nsamples"], budget["calib_seq_len"])
    if as_json:
        typer.echo(json.dumps({"checks": checks_json(checks), "model": note, "can": capabilities(checks)}, indent=2))
        return
    colors = {"ok": "green", "warn": "yellow", "absent": "dim"}
    table = Table(title="neuronforge doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, f"[{colors[check.status]}]{check.status}[/]", escape(check.detail))
    console.print(table)
    console.print(f"model: {note}")
    for line in capabilities(checks):
        console.print(f"  can run {line}")
    for check in checks:
        if check.fix:
            console.print(f"[bold]fix ({check.name}):[/] {check.fix}", highlight=False)
