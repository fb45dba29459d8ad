"""`neuronforge neuron-config` and `neuronforge compile`: thin CLI wrappers over config.py and compile.py."""

from __future__ import annotations

from pathlib import Path

import typer

from neuronforge.console import App, console

DTYPE_HELP = "Weight dtype on the device: int8, f8e4m3 or f8e5m2 (spelled as NxDI expects)."
TP_HELP = "Tensor-parallel degree; default: the largest that divides the query heads and fits --instance."
INSTANCE_HELP = "Target instance (sets the NeuronCore limit): ml.inf2.{xlarge,8xlarge,24xlarge,48xlarge}, ml.trn1.*"
NOT_CONVERT_HELP = "JSON list of blocks kept in bf16; default: <model>/modules_to_not_convert.json if present."
KV_HELP = "KV cache: fp8 (direct-cast e4m3) or bf16."
QTYPE_HELP = "per_channel_symmetric (default) or per_tensor_symmetric (refused with a non-empty skip list)."


def register(app: App) -> None:
    """Add the stage-2 commands to the root app."""

    @app.command("neuron-config")
    def neuron_config(
        model: str = typer.Option(..., "--model", help="Stage-1 output folder (or any Llama/Mistral HF folder)."),
        out: Path = typer.Option(..., "--out", help="Folder for neuron_config.json and modules_to_not_convert.json."),
        dtype: str = typer.Option("int8", "--dtype", help=DTYPE_HELP),
        not_convert: Path | None = typer.Option(None, "--not-convert", help=NOT_CONVERT_HELP),
        tp: int | None = typer.Option(None, "--tp", help=TP_HELP),
        instance: str = typer.Option("ml.inf2.xlarge", "--instance", help=INSTANCE_HELP),
        kv: str = typer.Option("fp8", "--kv", help=KV_HELP),
        qtype: str = typer.Option("per_channel_symmetric", "--qtype", help=QTYPE_HELP),
        batch_size: int = typer.Option(1, "--batch-size"),
        seq_len: int = typer.Option(1024, "--seq-len", help="Longest prompt + generation, in tokens."),
        n_positions: int | None = typer.Option(None, "--n-positions", help="KV cache length; default --seq-len."),
        sdk: str = typer.Option("2.28", "--sdk", help="Neuron SDK release to target (2.28 or 2.31)."),
    ) -> None:
        """Validate a NeuronConfig for NxD Inference and write it (runs anywhere, no Neuron SDK needed)."""
        from neuronforge.neuron.compile import print_notices
        from neuronforge.neuron.config import build_neuron_config_spec, default_not_convert, write_config_files
        from neuronforge.pipeline.models import resolve_model

        model_dir = resolve_model(model)
        spec = build_neuron_config_spec(
            model_dir, dtype=dtype, modules_to_not_convert=default_not_convert(model_dir, not_convert),
            tp_degree=tp, instance=instance, kv=kv, quantization_type=qtype,  # type: ignore[arg-type]
            batch_size=batch_size, seq_len=seq_len, n_positions=n_positions, sdk=sdk,
        )
        print_notices(spec.notices)
        for path in write_config_files(spec, out):
            console.print(f"[green]wrote:[/] {path}")

    @app.command("compile")
    def compile_(
        model: str = typer.Option(..., "--model", help="Stage-1 output folder (fake-quantized bf16 checkpoint)."),
        out: Path = typer.Option(..., "--out", help="Compiled folder to create (model.pt, presharded weights, ...)."),
        dtype: str = typer.Option("int8", "--dtype", help=DTYPE_HELP),
        tp: int | None = typer.Option(None, "--tp", help=TP_HELP),
        kv: str = typer.Option("fp8", "--kv", help=KV_HELP),
        instance: str = typer.Option("ml.inf2.xlarge", "--instance", help=INSTANCE_HELP),
        qtype: str = typer.Option("per_channel_symmetric", "--qtype", help=QTYPE_HELP),
        not_convert: Path | None = typer.Option(None, "--not-convert", help=NOT_CONVERT_HELP),
        neuron_config: Path | None = typer.Option(
            None, "--neuron-config", help="A neuron_config.json from `neuron-config`; replaces the flags above."
        ),
        batch_size: int = typer.Option(1, "--batch-size"),
        seq_len: int = typer.Option(1024, "--seq-len"),
        n_positions: int | None = typer.Option(None, "--n-positions"),
        sdk: str = typer.Option("2.28", "--sdk", help="Neuron SDK release the host runs (2.28 or 2.31)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    ) -> None:
        """Quantize with NxD, compile, load and smoke-test on an inf2/trn1 host (needs NxD Inference)."""
        from neuronforge.neuron.compile import CompileOptions, compile_model

        options = CompileOptions(
            model=model, out=out, dtype=dtype, tp=tp, kv=kv, instance=instance, qtype=qtype,  # type: ignore[arg-type]
            not_convert=not_convert, neuron_config=neuron_config, batch_size=batch_size, seq_len=seq_len,
            n_positions=n_positions, sdk=sdk, overwrite=overwrite,
        )
        path = compile_model(options)
        console.print(f"[green]compiled:[/] {path}")
