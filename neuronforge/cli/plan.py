"""CLI: `neuronforge plan` (the memory model lives in neuronforge.neuron.planner.plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from neuronforge.assets.models import resolve_model
from neuronforge.cli.app import console
from neuronforge.cli.options import JsonOpt, NotConvertOpt, given, model_option, parse_path_text
from neuronforge.neuron.numerics.dtypes import KvDtype, QuantDtype
from neuronforge.neuron.nxdi.config import default_not_convert
from neuronforge.neuron.planner.plan import (
    Deployment,
    deployment_from,
    load_model_shape,
    nothing_fits,
    plan,
    render_markdown,
)

PlanDtype = Literal["bf16", QuantDtype]


def plan_command(
    model: str = typer.Option(
        "smollm2",
        "--model",
        parser=parse_path_text,
        help="Embedded model name, a Hugging Face folder, or just its config.json (no weights).",
    ),
    dtype: PlanDtype | None = model_option(Deployment, "dtype"),
    kv: KvDtype | None = model_option(Deployment, "kv"),
    seq_len: int | None = model_option(Deployment, "seq_len"),
    batch_size: int | None = model_option(Deployment, "batch_size"),
    not_convert: NotConvertOpt = None,
    headroom: float | None = model_option(Deployment, "headroom"),
    as_json: JsonOpt = False,
) -> None:
    """Which inf2/trn1 instance (and tp degree) the model fits on, per NeuronCore, with on-demand prices.

    Default blocks kept in bf16: <model>/modules_to_not_convert.json when the folder has one (stage 1 writes it).
    """
    flags = given(locals(), Deployment)

    path = Path(model)
    source = path if path.exists() else resolve_model(model)
    entries = (
        default_not_convert(source, not_convert) if source.is_dir() else default_not_convert(source.parent, not_convert)
    )
    deployment = deployment_from(**flags, modules_to_not_convert=tuple(entries))
    result = plan(load_model_shape(source, name=None if path.exists() else model), deployment)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        console.print(render_markdown(result), markup=False, highlight=False, soft_wrap=True)
    if result.smallest is None:
        raise nothing_fits(result)
