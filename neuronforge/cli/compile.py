"""`neuronforge neuron-config` and `neuronforge compile`: thin CLI wrappers over config.py and compile.py."""

from __future__ import annotations

from pathlib import Path

import typer

from neuronforge.assets.models import resolve_model
from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import NotConvertOpt, OverwriteOpt, given, model_option, parse_path, parse_path_text
from neuronforge.core.outputs import output_dir
from neuronforge.errors import validated
from neuronforge.hf.not_convert import read_not_convert
from neuronforge.neuron.numerics.dtypes import KvDtype, QuantDtype, QuantType
from neuronforge.neuron.nxdi.compile import CompileOptions, compile_model, print_notices
from neuronforge.neuron.nxdi.config import NeuronConfigOptions, neuron_config, write_config_files

N = NeuronConfigOptions
C = CompileOptions


def neuron_config_command(
    model: str = typer.Option(
        ..., "--model", parser=parse_path_text, help="Stage-1 output folder (or any HF folder of a supported family)."
    ),
    out: Path = typer.Option(
        ..., "--out", parser=parse_path, help="Folder for neuron_config.json and modules_to_not_convert.json."
    ),
    dtype: QuantDtype | None = model_option(N, "dtype"),
    not_convert: NotConvertOpt = None,
    tp_degree: int | None = model_option(N, "tp_degree"),
    instance: str | None = model_option(N, "instance"),
    kv: KvDtype | None = model_option(N, "kv"),
    qtype: QuantType | None = model_option(N, "qtype"),
    batch_size: int | None = model_option(N, "batch_size"),
    seq_len: int | None = model_option(N, "seq_len"),
    sdk: str | None = model_option(N, "sdk"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Validate a NeuronConfig for NxD Inference and write it (runs anywhere, no Neuron SDK needed)."""
    flags = given(locals(), N)

    model_dir = resolve_model(model)
    out = checked_out(out, overwrite, model=model_dir, not_convert=not_convert)
    if not_convert is not None:
        flags["modules_to_not_convert"] = read_not_convert(not_convert)
    spec = neuron_config(model_dir, validated(N, "neuron-config", **flags))
    print_notices(spec.notices)
    with output_dir(out, overwrite=overwrite) as tmp:
        written = write_config_files(spec, tmp)
    for path in written:
        console.print(f"[green]wrote:[/] {out / path.name}")


def compile_command(
    model: str = typer.Option(..., "--model", parser=parse_path_text, help=C.model_fields["model"].description),
    out: Path = typer.Option(..., "--out", parser=parse_path, help=C.model_fields["out"].description),
    dtype: QuantDtype | None = model_option(C, "dtype"),
    tp_degree: int | None = model_option(C, "tp_degree"),
    kv: KvDtype | None = model_option(C, "kv"),
    instance: str | None = model_option(C, "instance"),
    qtype: QuantType | None = model_option(C, "qtype"),
    not_convert: NotConvertOpt = None,
    neuron_config: Path | None = model_option(C, "neuron_config"),
    batch_size: int | None = model_option(C, "batch_size"),
    seq_len: int | None = model_option(C, "seq_len"),
    sdk: str | None = model_option(C, "sdk"),
    overwrite: bool | None = model_option(C, "overwrite", "--overwrite"),
    compile_only: bool | None = model_option(C, "compile_only", "--compile-only"),
) -> None:
    """Quantize with NxD and compile; then load and smoke-test on the host's NeuronCores (needs NxD Inference)."""
    flags = given(locals(), C)

    if not_convert is not None:
        flags["modules_to_not_convert"] = read_not_convert(not_convert)
    model_dir = resolve_model(model)
    checked = checked_out(out, bool(overwrite), model=model_dir, neuron_config=neuron_config)
    options = validated(C, "compile", **{**flags, "model": str(model_dir), "out": checked})
    path = compile_model(options)
    console.print(f"[green]compiled:[/] {path}")
