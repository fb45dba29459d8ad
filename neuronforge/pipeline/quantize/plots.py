"""Bar chart of per-block sensitivity (matplotlib Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from neuronforge.core.atomic import atomic_write_bytes


def sensitivity_chart(scores: dict[str, float], kept: list[str], method: str, path: Path) -> None:
    """One bar per block in model order; blocks kept in bf16 are highlighted."""
    import io

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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
