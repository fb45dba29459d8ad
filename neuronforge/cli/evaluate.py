"""CLI: `neuronforge evaluate` (the implementation lives in neuronforge.pipeline.evaluate.api)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import (
    BudgetInstanceOpt,
    DeviceOpt,
    ModelOpt,
    PresetCalibSeqLenOpt,
    PresetIterOpt,
    PresetNsamplesOpt,
    PresetOpt,
    SeqLenOpt,
)


def evaluate_command(
    model: ModelOpt = "smollm2",
    out: Path = typer.Option(Path("eval"), "--out", help="Folder for report.md/json/png and cached stage checkpoints."),
    dtype: str = typer.Option("int8", "--dtype", help="Weight dtype on Neuron: int8 or f8e4m3."),
    kv: str = typer.Option(
        "bf16", "--kv", help="KV cache: bf16, or fp8 (NxDI's direct-cast e4m3) for every quantized variant."
    ),
    text: Path | None = typer.Option(
        None, "--text", help=".txt/.jsonl to calibrate and evaluate on (default: embedded texts)."
    ),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Held-out tokens scored per text."),
    eval_seq_len: int = typer.Option(256, "--eval-seq-len", help="Evaluation window length (tokens)."),
    prefill_len: int | None = typer.Option(
        None, "--prefill-len", help="fp8 KV: positions from here run as decode (default --eval-seq-len/2)."
    ),
    preset: PresetOpt = "cpu-fast",
    iters: PresetIterOpt = None,
    nsamples: PresetNsamplesOpt = None,
    calib_seq_len: PresetCalibSeqLenOpt = None,
    minmax_tuning: bool = typer.Option(
        False, "--minmax-tuning/--no-minmax-tuning", help="Also tune AutoRound's per-row range shrink (GPU stage)."
    ),
    sensitivity: str = typer.Option("first_order", "--sensitivity", help="first_order, measured or variance."),
    selection: str = typer.Option("budget", "--selection", help="Which blocks stay bf16: budget, topk or threshold."),
    max_extra_memory: float = typer.Option(
        0.10, "--max-extra-memory", help="budget: extra weight memory allowed (fraction)."
    ),
    budget_instance: BudgetInstanceOpt = None,
    seq_len: SeqLenOpt = 1024,
    topk: int | None = typer.Option(None, "--topk", help="topk: number of blocks kept in bf16."),
    threshold: float | None = typer.Option(None, "--threshold", help="threshold: share of total sensitivity."),
    gsm8k: Path | None = typer.Option(
        None, "--gsm8k", help="Local GSM8K-style jsonl (question, answer '#### N') for task accuracy."
    ),
    task_limit: int | None = typer.Option(None, "--task-limit", help="Score only the first N problems."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Greedy tokens generated per problem."),
    lm_eval_tasks: str | None = typer.Option(
        None, "--lm-eval-tasks", help="Comma-separated lm-eval tasks (needs neuronforge[eval] and the task data)."
    ),
    lm_eval_limit: int | None = typer.Option(None, "--lm-eval-limit", help="Examples per lm-eval task."),
    device: DeviceOpt = "auto",
) -> None:
    """Accuracy, weight memory and smallest inf2 instance of bf16, RTN, AutoRound and selective variants.

    Accuracy comes from the Neuron emulator (on the GPU when there is one); the instance from `neuronforge plan`'s memory model at batch 1
    and --seq-len.
    """
    from neuronforge.pipeline.evaluate.api import evaluate, options_from
    from neuronforge.pipeline.evaluate.report import REPORT_MD

    options = options_from(
        device=device,
        model=model,
        out=checked_out(out, model=model, text=text, gsm8k=gsm8k),
        dtype=dtype,
        kv=kv,
        text=text,
        max_tokens=max_tokens,
        eval_seq_len=eval_seq_len,
        prefill_len=prefill_len,
        preset=preset,
        iters=iters,
        nsamples=nsamples,
        calib_seq_len=calib_seq_len,
        minmax_tuning=minmax_tuning,
        sensitivity=sensitivity,
        selection=selection,
        max_extra_memory=max_extra_memory,
        budget_instance=budget_instance,
        seq_len=seq_len,
        topk=topk,
        threshold=threshold,
        gsm8k=gsm8k,
        task_limit=task_limit,
        max_new_tokens=max_new_tokens,
        lm_eval_tasks=[t for t in (lm_eval_tasks or "").split(",") if t],
        lm_eval_limit=lm_eval_limit,
    )
    report = evaluate(options, command=shlex.join(["neuronforge", *sys.argv[1:]]))
    console.print((options.out / REPORT_MD).read_text(), markup=False, highlight=False)
    if report.flagged:
        console.print(f"[bold yellow]{len(report.flagged)} variant(s) flagged, see the warnings above.[/]")
    console.print(f"[green]wrote[/] {options.out}/report.md, report.json, report.png")
