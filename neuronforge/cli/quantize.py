"""`neuronforge quantize`: stage 1 from the command line (heavy imports stay inside the command)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import (
    BatchSizeOpt,
    BudgetInstanceOpt,
    KvOpt,
    ModelOpt,
    NotConvertOpt,
    PresetCalibSeqLenOpt,
    PresetIterOpt,
    PresetNsamplesOpt,
    PresetOpt,
    SeqLenOpt,
    TextOpt,
    TpDegreeOpt,
)
from neuronforge.core.progress import err_console
from neuronforge.pipeline.quantize.api import QuantizeSettings

TARGET_KL = QuantizeSettings.model_fields["target_kl"]  # declared once, in the settings model


def quantize_command(
    out: Path = typer.Option(..., "--out", help="Output folder to create (fails if it exists)."),
    model: ModelOpt = "smollm2",
    dtype: str = typer.Option("int8", "--dtype", help="Weight grid: int8 or f8e4m3 (NxD per-channel symmetric)."),
    preset: PresetOpt = "gpu",
    iters: PresetIterOpt = None,
    nsamples: PresetNsamplesOpt = None,
    calib_seq_len: PresetCalibSeqLenOpt = None,
    text: TextOpt = None,
    sensitivity: str = typer.Option(
        "first_order", "--sensitivity", help="first_order (1 fwd+bwd), measured (KL per block), or variance."
    ),
    selection: str = typer.Option("budget", "--selection", help="budget, topk, threshold, or none."),
    max_extra_memory: float = typer.Option(
        0.10, "--max-extra-memory", help="Budget rule: extra weight memory allowed for bf16 blocks (fraction)."
    ),
    topk: int | None = typer.Option(None, "--topk", help="topk rule: number of blocks kept in bf16."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="threshold rule: keep blocks whose share of total sensitivity is >= this."
    ),
    budget_instance: BudgetInstanceOpt = None,
    kv: KvOpt = "fp8",
    seq_len: SeqLenOpt = 1024,
    batch_size: BatchSizeOpt = 1,
    tp_degree: TpDegreeOpt = None,
    target_kl: float | None = typer.Option(TARGET_KL.default, "--target-kl", help=TARGET_KL.description),
    not_convert: NotConvertOpt = None,
    autoround: bool = typer.Option(True, "--autoround/--no-autoround", help="--no-autoround: RTN on NxD's grid."),
    minmax_tuning: bool = typer.Option(
        False,
        "--minmax-tuning/--no-minmax-tuning",
        help="Also tune AutoRound's per-row range shrink (clips outliers; off by default, see README).",
    ),
) -> None:
    """Stage 1: sensitivity + AutoRound on NxD's grid -> grid-exact fake-quantized bf16 checkpoint.

    --kv, --seq-len, --batch-size and --tp-degree describe the deployment --budget-instance is checked against.
    """
    from neuronforge.hf.not_convert import read_not_convert
    from neuronforge.pipeline.quantize.api import options_from, quantize

    options = options_from(
        model=model,
        out=checked_out(out, model=model, text=text, not_convert=not_convert),
        dtype=dtype,
        preset=preset,
        iters=iters,
        nsamples=nsamples,
        calib_seq_len=calib_seq_len,
        text=text,
        sensitivity=sensitivity,
        selection=selection,
        max_extra_memory=max_extra_memory,
        budget_instance=budget_instance,
        kv=kv,
        seq_len=seq_len,
        batch_size=batch_size,
        tp_degree=tp_degree,
        topk=topk,
        threshold=threshold,
        autoround=autoround,
        minmax_tuning=minmax_tuning,
        target_kl=target_kl,
        modules_to_not_convert=read_not_convert(not_convert) if not_convert else None,
    )
    result = quantize(options)

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.3f}%"

    console.print(f"[green]wrote:[/] {escape(str(result.out_dir))}")
    console.print(f"modules_to_not_convert: {escape(str(result.modules_to_not_convert))}")
    if result.grid_agreement is None:
        err_console.print(
            "[yellow]warning:[/] nothing was quantized: every block is in modules_to_not_convert, so this "
            "checkpoint is the bf16 model (lower --max-extra-memory or list fewer blocks)"
        )
    console.print(
        f"grid agreement (NxD re-quantization): {percent(result.grid_agreement)}  "
        f"(naive export: {percent(result.naive_agreement)})"
    )
    console.print(
        f"values kept on Neuron (within bf16 precision): {percent(result.value_agreement)}  "
        f"(naive export: {percent(result.naive_value_agreement)})"
    )
    if result.accuracy_target is not None:
        target = result.accuracy_target
        where = f"{target['instance']} (tp {target['tp_degree']}, ${target['usd_per_hour']:.2f}/h)"
        console.print(
            f"accuracy target KL {target['target_kl']:g}: validation KL {target['validation']['kl']:.5f}, "
            f"test KL {target['test']['kl']:.5f} (split the search never read), floor {target['floor_kl']:.5f}; "
            f"{target['kept_blocks']} bf16 blocks, +{target['extra_bytes'] / 2**20:.1f} MiB, smallest inf2: "
            f"{escape(where) if target['instance'] else 'none'}"
        )
        console.print(
            f"frontier: {target['candidates_measured']} candidates measured in {target['search_seconds']:.0f} s -> "
            f"{escape(str(result.out_dir / 'frontier.md'))}"
        )
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
