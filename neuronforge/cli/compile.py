"""`neuronforge neuron-config` and `neuronforge compile`: thin CLI wrappers over config.py and compile.py."""

from __future__ import annotations

from pathlib import Path

import typer

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import (
    BatchSizeOpt,
    InstanceOpt,
    KvOpt,
    NotConvertOpt,
    OverwriteOpt,
    QtypeOpt,
    SdkOpt,
    SeqLenOpt,
    TpDegreeOpt,
)

DTYPE_HELP = "Weight dtype on the device: int8 or f8e4m3 (spelled as NxDI expects; f8e5m2 is refused)."
COMPILE_ONLY_HELP = (
    "Quantize, compile and preshard only: no load or smoke test, so no NeuronCores are needed (CPU cross-compile)."
)


def neuron_config_command(
    model: str = typer.Option(..., "--model", help="Stage-1 output folder (or any Llama/Mistral HF folder)."),
    out: Path = typer.Option(..., "--out", help="Folder for neuron_config.json and modules_to_not_convert.json."),
    dtype: str = typer.Option("int8", "--dtype", help=DTYPE_HELP),
    not_convert: NotConvertOpt = None,
    tp_degree: TpDegreeOpt = None,
    instance: InstanceOpt = "ml.inf2.xlarge",
    kv: KvOpt = "fp8",
    qtype: QtypeOpt = "per_channel_symmetric",
    batch_size: BatchSizeOpt = 1,
    seq_len: SeqLenOpt = 1024,
    sdk: SdkOpt = "2.28",
    overwrite: OverwriteOpt = False,
) -> None:
    """Validate a NeuronConfig for NxD Inference and write it (runs anywhere, no Neuron SDK needed)."""
    from neuronforge.assets.models import resolve_model
    from neuronforge.core.outputs import output_dir
    from neuronforge.neuron.compile import print_notices
    from neuronforge.neuron.config import build_neuron_config_spec, default_not_convert, write_config_files

    model_dir = resolve_model(model)
    out = checked_out(out, overwrite, model=model_dir, not_convert=not_convert)
    spec = build_neuron_config_spec(
        model_dir,
        dtype=dtype,
        modules_to_not_convert=default_not_convert(model_dir, not_convert),
        tp_degree=tp_degree,
        instance=instance,
        kv=kv,
        quantization_type=qtype,
        batch_size=batch_size,
        seq_len=seq_len,
        sdk=sdk,
    )
    print_notices(spec.notices)
    with output_dir(out, overwrite=overwrite) as tmp:
        written = write_config_files(spec, tmp)
    for path in written:
        console.print(f"[green]wrote:[/] {out / path.name}")


def compile_command(
    model: str = typer.Option(..., "--model", help="Stage-1 output folder (fake-quantized bf16 checkpoint)."),
    out: Path = typer.Option(..., "--out", help="Compiled folder to create (model.pt, presharded weights, ...)."),
    dtype: str = typer.Option("int8", "--dtype", help=DTYPE_HELP),
    tp_degree: TpDegreeOpt = None,
    kv: KvOpt = "fp8",
    instance: InstanceOpt = "ml.inf2.xlarge",
    qtype: QtypeOpt = "per_channel_symmetric",
    not_convert: NotConvertOpt = None,
    neuron_config: Path | None = typer.Option(
        None, "--neuron-config", help="A neuron_config.json from `neuron-config`; replaces the flags above."
    ),
    batch_size: BatchSizeOpt = 1,
    seq_len: SeqLenOpt = 1024,
    sdk: SdkOpt = "2.28",
    overwrite: OverwriteOpt = False,
    compile_only: bool = typer.Option(False, "--compile-only", help=COMPILE_ONLY_HELP),
) -> None:
    """Quantize with NxD and compile; then load and smoke-test on the host's NeuronCores (needs NxD Inference)."""
    from neuronforge.assets.models import resolve_model
    from neuronforge.errors import validated
    from neuronforge.neuron.compile import CompileOptions, compile_model

    model_dir = resolve_model(model)
    options = validated(
        CompileOptions,
        "compile",
        model=str(model_dir),
        out=checked_out(out, overwrite, model=model_dir, neuron_config=neuron_config),
        dtype=dtype,
        tp=tp_degree,
        kv=kv,
        instance=instance,
        qtype=qtype,
        not_convert=not_convert,
        neuron_config=neuron_config,
        batch_size=batch_size,
        seq_len=seq_len,
        sdk=sdk,
        overwrite=overwrite,
        compile_only=compile_only,
    )
    path = compile_model(options)
    console.print(f"[green]compiled:[/] {path}")
