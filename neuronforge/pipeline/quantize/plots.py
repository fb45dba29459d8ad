"""Charts of stage 1: per-block sensitivity and the accuracy/cost frontier (matplotlib Agg: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.core.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from neuronforge.pipeline.quantize.target import Frontier


def sensitivity_chart(scores: dict[str, float], kept: list[str], method: str, path: Path) -> None:
    """One bar per block in model order; blocks kept in bf16 are highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names)), 4.0))
    colors = ["#d62728" if n in kept else "#1f77b4" for n in names]
    ax.bar(range(len(names)), [scores[n] for n in names], color=colors)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(f"sensitivity ({method})")
    ax.set_title("Per-block quantization sensitivity (red: kept in bf16)")
    _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def frontier_chart(frontier: Frontier, path: Path) -> None:
    """Validation KL against weight memory, one point per measured candidate, labelled with its instance and price;
    the target and the floor as lines, the chosen point circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(frontier.points, key=lambda p: p.weight_bytes)
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    x = [p.weight_bytes / 2**20 for p in points]
    ax.plot(x, [p.validation.kl for p in points], "o-", color="#1f77b4", label="measured candidates")
    for p, xi in zip(points, x, strict=True):
        price = f" ${p.usd_per_hour:.2f}/h" if p.usd_per_hour is not None else ""
        ax.annotate(
            f"{len(p.kept)} bf16{price}", (xi, p.validation.kl), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    if frontier.chosen is not None:
        c = frontier.chosen
        ax.plot([c.weight_bytes / 2**20], [c.validation.kl], "o", ms=14, mfc="none", mec="#d62728", label="chosen")
    ax.axhline(frontier.target_kl, color="#d62728", ls="--", lw=1, label=f"target {frontier.target_kl:g}")
    ax.axhline(
        frontier.floor.kl, color="#7f7f7f", ls=":", lw=1, label=f"floor ({frontier.kv} KV) {frontier.floor.kl:.4f}"
    )
    ax.set_xlabel("weight memory (MiB)")
    ax.set_ylabel("validation KL to bf16 (nats/token)")
    ax.set_title("Accuracy/cost frontier (emulated Neuron numerics)")
    ax.legend(fontsize=8)
    _save(fig, plt, path)
