"""The accuracy report: one table a user reads to decide whether to ship a quantized variant.

Data model (pydantic, so report.json round-trips) plus pure renderers: markdown table, JSON, and a
PNG of accuracy against weight memory. Writing is atomic per file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from neuronforge.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from neuronforge.neuron.planner.weight_memory import format_bytes

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


class VariantResult(BaseModel):
    """Every figure measured for one variant (the reference included)."""

    key: str
    label: str
    weights: str | None  # quantized weight dtype, None = bf16
    kv_fp8: bool = False
    autoround: bool = False
    selective: bool = False
    modules_to_not_convert: list[str] = Field(default_factory=list)
    perplexity: dict[str, float]
    ppl_recovery: dict[str, float]  # bf16_ppl / variant_ppl * 100 per text: higher is better
    kl: float  # mean KL(bf16 || variant), nats per token
    agreement: float  # top-1 next-token agreement with bf16
    weight_bytes: int
    weight_percent: float  # of the bf16 model's bytes
    instance: str | None = None  # smallest inf2 instance it fits (neuron/plan.py); None = none fits
    instance_tp: int | None = None
    instance_usd_per_hour: float | None = None  # EC2 on-demand, pinned table
    task_accuracy: float | None = None
    task_recovery: float | None = None
    kv_out_of_range: float | None = None  # fraction of K/V values with |x| > 240 (fp8 KV only)
    lm_eval: dict[str, dict[str, float]] = Field(default_factory=dict)  # task -> metric -> value
    flags: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    device: str = ""  # where its emulation ran (`auto` may put a variant too large for the GPU on the CPU)
    # AutoRound variants: the whole model as tuned and as RTN on the validation text, and which was written
    # (QuantizeResult.autoround_vs_rtn)
    autoround_vs_rtn: dict[str, Any] | None = None

    @property
    def mean_ppl_recovery(self) -> float:
        return sum(self.ppl_recovery.values()) / len(self.ppl_recovery)


class EvaluationReport(BaseModel):
    model: str
    dtype: str
    kv: str  # "bf16" | "fp8"
    eval_tokens: dict[str, int]  # held-out tokens scored per text
    settings: dict[str, object]
    task: str | None = None  # description of the optional task set
    variants: list[VariantResult]
    timings: dict[str, float] = Field(default_factory=dict)
    command: str = ""
    device: dict[str, object] = Field(default_factory=dict)  # core/devices.py `device_info` of --device

    @property
    def flagged(self) -> list[VariantResult]:
        return [v for v in self.variants if v.flags]


def _kept(v: VariantResult) -> str:
    if v.weights is None:
        return "all"
    return ", ".join(v.modules_to_not_convert) if v.modules_to_not_convert else "none"


def instance_label(v: VariantResult) -> str:
    if v.instance is None:
        return "none fits"
    return f"{v.instance.removeprefix('ml.')} (tp {v.instance_tp}, ${v.instance_usd_per_hour:.2f})"


def autoround_vs_rtn_line(choice: dict[str, Any]) -> str:
    """What the whole-model check decided, in words (stage 1 keeps the tuning only where it beats RTN)."""
    tuned, rtn = choice["autoround"]["validation"]["kl"], choice["rtn"]["validation"]["kl"]
    if choice["kept"] == "rtn":
        return (
            f"RTN's weights were written: the tuned model scored KL {tuned:.5f} vs RTN's {rtn:.5f} on validation text"
        )
    return f"AutoRound's tuning was written: KL {tuned:.5f} vs RTN's {rtn:.5f} on validation text"


def render_markdown(report: EvaluationReport) -> str:
    """The table, with units and the direction of every column spelled out."""
    texts = list(report.eval_tokens)
    has_task = any(v.task_accuracy is not None for v in report.variants)
    head = ["Variant", *(f"ppl {t}" for t in texts), "ppl recovery %", "KL to bf16", "top-1 agree"]
    if has_task:
        head += ["task acc", "task recovery %"]
    head += ["weights", "% of bf16", "smallest inf2 (tp, $/h)", "bf16 blocks kept"]
    rows = []
    for v in report.variants:
        row = [
            v.label,
            *(f"{v.perplexity[t]:.3f}" for t in texts),
            f"{v.mean_ppl_recovery:.2f}",
            f"{v.kl:.5f}",
            f"{v.agreement:.4f}",
        ]
        if has_task:
            row += [
                "-" if v.task_accuracy is None else f"{100 * v.task_accuracy:.1f}",
                "-" if v.task_recovery is None else f"{v.task_recovery:.1f}",
            ]
        row += [format_bytes(v.weight_bytes), f"{v.weight_percent:.1f}", instance_label(v), _kept(v)]
        rows.append(row)
    lines = [
        f"# Accuracy report: {report.model}, {report.dtype} weights, {report.kv} KV cache",
        "",
        "Measured on the CPU reference path (bit-faithful emulation of NxD Inference numerics).",
        f"Held-out tokens per text: {', '.join(f'{t} {n}' for t, n in report.eval_tokens.items())}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "- ppl recovery % = mean over texts of bf16_ppl / variant_ppl x 100: higher is better, 100 = no loss.",
        "- KL to bf16 = mean KL(P_bf16 || P_variant) per token in nats (lower is better); top-1 agree = fraction of",
        "  positions whose greedy next token equals bf16's.",
        "- weights = bytes as Neuron stores them: int8/fp8 codes + fp32 per-channel scales + bf16 for excluded",
        "  blocks, embeddings, norms and the device's own lm_head copy.",
        "- smallest inf2 = the cheapest ml.inf2 instance (and tp degree) whose NeuronCores hold the variant's weights",
        f"  and KV cache at batch 1, seq-len {report.settings.get('seq_len', 1024)} (`neuronforge plan` shows every "
        "instance); $/h = EC2 on-demand, pinned table.",
    ]
    if report.task:
        lines.append(f"- task acc = exact-match accuracy on {report.task}; task recovery % = variant / bf16 x 100.")
    if report.kv == "fp8":
        lines.append("- fp8 KV: tokens after the prefill read past K/V through a direct cast to e4m3, as NxDI decodes.")
    for v in report.variants:
        if v.autoround_vs_rtn is not None:
            lines.append(f"- {v.label}: {autoround_vs_rtn_line(v.autoround_vs_rtn)}")
    for v in report.flagged:
        lines.append(f"- **WARNING {v.label}**: {'; '.join(v.flags)}")
    lines += _lm_eval_table(report)
    if report.command:
        lines += ["", f"Command: `{report.command}`"]
    if report.device:
        where = sorted({v.device for v in report.variants if v.device})
        lines.append(
            f"Device: {report.device.get('device')} ({report.device.get('name')}); variants emulated on "
            f"{', '.join(where) or 'n/a'}"
        )
    if report.timings:
        lines.append("Timings (s): " + ", ".join(f"{k} {t:.1f}" for k, t in report.timings.items()))
    return "\n".join(lines) + "\n"


def _lm_eval_table(report: EvaluationReport) -> list[str]:
    """A second table with lm-evaluation-harness scores, when any variant has them."""
    columns = sorted({(task, metric) for v in report.variants for task, m in v.lm_eval.items() for metric in m})
    if not columns:
        return []
    lines = [
        "",
        "lm-evaluation-harness (same emulated variants):",
        "",
        "| Variant | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for v in report.variants:
        cells = [f"{v.lm_eval[t][m]:.4f}" if m in v.lm_eval.get(t, {}) else "-" for t, m in columns]
        lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    return lines


def render_plot(report: EvaluationReport) -> bytes:
    """PNG: accuracy (task accuracy when scored, else ppl recovery) against weight memory, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_task = all(v.task_accuracy is not None for v in report.variants)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for v in report.variants:
        y = 100 * v.task_accuracy if use_task and v.task_accuracy is not None else v.mean_ppl_recovery
        x = v.weight_bytes / 1e6
        ax.scatter([x], [y], s=60, marker="s" if v.weights is None else "o", color="tab:red" if v.flags else "tab:blue")
        ax.annotate(v.label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("weight memory on Neuron (MB)")
    ax.set_ylabel("task accuracy (%)" if use_task else "perplexity recovery (%), higher is better")
    ax.set_title(f"{report.model}: {report.dtype} weights, {report.kv} KV", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: EvaluationReport, out_dir: Path) -> dict[str, Path]:
    """report.md, report.json and report.png in `out_dir`, each written atomically."""
    paths = {name: Path(out_dir) / name for name in (REPORT_MD, REPORT_JSON, REPORT_PNG)}
    atomic_write_bytes(paths[REPORT_PNG], render_plot(report))
    atomic_write_json(paths[REPORT_JSON], report.model_dump(mode="json"))
    atomic_write_text(paths[REPORT_MD], render_markdown(report))
    return paths
