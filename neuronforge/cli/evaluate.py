"""CLI: `neuronforge evaluate` (the implementation lives in neuronforge.pipeline.evaluate.api)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import VerboseOpt, given, model_option, preset_option
from neuronforge.core.devices import DeviceRequest
from neuronforge.core.logs import third_party_log, third_party_logs
from neuronforge.neuron.numerics.dtypes import ExportDtype, KvDtype
from neuronforge.pipeline.evaluate.api import EvaluateOptions, evaluate, options_from
from neuronforge.pipeline.evaluate.report import REPORT_MD
from neuronforge.pipeline.quantize.selection import SelectionRule
from neuronforge.pipeline.quantize.sensitivity import Sensitivity


def _h(field: str) -> str:
    return EvaluateOptions.model_fields[field].description or ""


E = EvaluateOptions
PRESET_FILLED = "from --preset"


def evaluate_command(
    model: str | None = model_option(E, "model"),
    out: Path | None = model_option(E, "out"),
    dtype: ExportDtype | None = model_option(E, "dtype"),
    kv: KvDtype | None = model_option(
        E,
        "kv",
        text=(E.model_fields["kv"].description or "") + "; for every quantized variant (fp8 adds bf16 + fp8 KV)",
    ),
    text: Path | None = model_option(E, "text"),
    eval_tokens: int | None = model_option(E, "eval_tokens"),
    eval_seq_len: int | None = model_option(E, "eval_seq_len"),
    prefill_len: int | None = model_option(E, "prefill_len"),
    preset: str | None = preset_option(E),
    iters: int | None = model_option(E, "iters", default_text=PRESET_FILLED),
    nsamples: int | None = model_option(E, "nsamples", default_text=PRESET_FILLED),
    calib_seq_len: int | None = model_option(E, "calib_seq_len", default_text=PRESET_FILLED),
    minmax_tuning: bool | None = model_option(E, "minmax_tuning", "--minmax-tuning/--no-minmax-tuning"),
    sensitivity: Sensitivity | None = model_option(E, "sensitivity"),
    selection: SelectionRule | None = model_option(E, "selection"),
    max_extra_memory: float | None = model_option(E, "max_extra_memory"),
    budget_instance: str | None = model_option(E, "budget_instance"),
    seq_len: int | None = model_option(E, "seq_len"),
    topk: int | None = model_option(E, "topk"),
    threshold: float | None = model_option(E, "threshold"),
    gsm8k: Path | None = model_option(E, "gsm8k"),
    task_limit: int | None = model_option(E, "task_limit"),
    max_new_tokens: int | None = model_option(E, "max_new_tokens"),
    lm_eval_tasks: str | None = model_option(E, "lm_eval_tasks", text="comma-separated; " + _h("lm_eval_tasks")),
    lm_eval_limit: int | None = model_option(E, "lm_eval_limit"),
    verbose: VerboseOpt = False,
    device: DeviceRequest | None = model_option(E, "device"),
) -> None:
    """Accuracy, weight memory and smallest inf2 instance of bf16, RTN, AutoRound and selective variants.

    Accuracy comes from the Neuron emulator (on the GPU when there is one); the instance from `neuronforge plan`'s memory model at batch 1
    and --seq-len.
    """
    flags = given(locals(), E)

    if lm_eval_tasks is not None:
        flags["lm_eval_tasks"] = [t for t in lm_eval_tasks.split(",") if t]
    options = options_from(**{**flags, "preset": preset})
    out = checked_out(options.out, True, model=options.model, text=options.text, gsm8k=options.gsm8k)
    options = options.model_copy(update={"out": out})
    with third_party_logs(third_party_log(out), verbose):
        report = evaluate(options, command=shlex.join(["neuronforge", *sys.argv[1:]]))
    console.print((options.out / REPORT_MD).read_text(), markup=False, highlight=False)
    if report.flagged:
        console.print(f"[bold yellow]{len(report.flagged)} variant(s) flagged, see the warnings above.[/]")
    console.print(f"[green]wrote[/] {options.out}/report.md, report.json, report.png")
