"""Choose which blocks stay bf16 (NxDI's `modules_to_not_convert`) from their sensitivity scores.

Memory model (per Linear, what NxD stores): quantized = 1 byte per weight + 4 bytes per output row
(fp32 scale); bf16 = 2 bytes per weight. Keeping a block costs `weights - 4 * rows` extra bytes.

The budget (`max_extra_memory`) is a fraction of the all-quantized weight bytes of the *choosable*
blocks. Forced blocks (lm_head of a tied-embedding model, which NxDI must keep bf16 anyway) are
always listed, and neither count toward the base nor spend the budget: they are not a choice.

Or the budget is an instance (`--budget-instance ml.inf2.xlarge`): keep as many blocks bf16 as still fit
on it, checked per NeuronCore by neuron/plan.py (weights, KV cache and host RAM, at the deployment's tp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.quantize.sensitivity import Block

SelectionRule = Literal["budget", "topk", "threshold"]
Selection = Literal[SelectionRule, "none"]  # "none": every choosable block is quantized
SELECTION_HELP = (
    "how modules_to_not_convert is chosen from the sensitivities: budget (max_extra_memory or budget_instance), "
    "topk, threshold, or none (every block quantized)"
)


def missing_selection_value(rule: str, topk: int | None, threshold: float | None) -> str | None:
    """What `rule` still needs, for the options models' validators (quantize, evaluate, run): a missing --topk or
    --threshold is refused with the options, before the model loads (report D12), not after the sensitivities."""
    if rule == "topk" and topk is None:
        return "selection topk needs topk (how many blocks stay bf16), e.g. --topk 2"
    if rule == "threshold" and threshold is None:
        return "selection threshold needs threshold (a share of the total sensitivity in [0, 1]), e.g. --threshold 0.2"
    return None


def quantized_bytes(block: Block) -> int:
    return block.weights + 4 * block.rows


def extra_bytes(block: Block) -> int:
    """Extra bytes when `block` stays bf16 instead of 8-bit + fp32 scales."""
    return 2 * block.weights - quantized_bytes(block)


@dataclass(frozen=True)
class Choice:
    kept: list[str]  # blocks kept in bf16, forced ones included, canonical NxDI names
    extra_bytes: int  # bytes spent on choosable kept blocks
    budget_bytes: int | None  # only for the budget rule


def _ordered(kept: set[str], blocks: list[Block]) -> list[str]:
    return [b.name for b in blocks if b.name in kept]


def by_value(blocks: Sequence[Block], scores: dict[str, float]) -> list[Block]:
    """Choosable blocks by damage avoided per extra byte, highest first: the order the budget rule fills in."""
    choosable = [b for b in blocks if not b.forced]
    return sorted(choosable, key=lambda b: scores[b.name] / max(extra_bytes(b), 1), reverse=True)


def fill_budget(blocks: Sequence[Block], scores: dict[str, float], budget: int) -> set[str]:
    """The budget rule: best value first, skip what does not fit in `budget` extra bytes, keep filling with smaller
    blocks (a block that avoids no damage is never kept). Forced blocks are not included."""
    kept: set[str] = set()
    spent = 0
    for block in by_value(blocks, scores):
        if scores[block.name] > 0 and spent + extra_bytes(block) <= budget:
            kept.add(block.name)
            spent += extra_bytes(block)
    return kept


def select(
    blocks: list[Block],
    scores: dict[str, float],
    rule: Selection = "budget",
    max_extra_memory: float = 0.10,
    topk: int | None = None,
    threshold: float | None = None,
    fits: Callable[[list[str]], bool] | None = None,
) -> Choice:
    """Apply one selection rule. `threshold` is a share of the total score (0..1); `topk` a block count.

    With `fits` (an instance budget: neuron/plan.py's per-NeuronCore check of a kept list), the budget rule
    keeps blocks while the whole model still fits instead of spending a share of the weight bytes.
    """
    choosable = [b for b in blocks if not b.forced]
    missing = [b.name for b in choosable if b.name not in scores or not math.isfinite(scores[b.name])]
    if missing:
        raise NeuronforgeError(f"no finite sensitivity score for blocks {missing}", "re-run the sensitivity analysis")
    kept = {b.name for b in blocks if b.forced}
    by_score = sorted(choosable, key=lambda b: scores[b.name], reverse=True)
    budget: int | None = None
    if rule == "budget" and fits is not None:
        # Best damage avoided per extra byte first; skip a block that would no longer fit, try smaller ones.
        for block in by_value(blocks, scores):
            if scores[block.name] > 0 and fits(_ordered(kept | {block.name}, blocks)):
                kept.add(block.name)
    elif rule == "budget":
        if not math.isfinite(max_extra_memory) or max_extra_memory < 0:
            raise NeuronforgeError(
                f"--max-extra-memory must be a fraction >= 0, got {max_extra_memory}",
                "e.g. 0.10 allows 10% more weight memory than an all-quantized model",
            )
        budget = int(max_extra_memory * sum(quantized_bytes(b) for b in choosable))
        kept |= fill_budget(blocks, scores, budget)
    elif rule == "topk":
        if topk is None or topk < 0:
            raise NeuronforgeError(f"--topk must be an integer >= 0 with --selection topk, got {topk}", "e.g. --topk 2")
        kept |= {b.name for b in by_score[:topk]}
    elif rule == "threshold":
        if threshold is None or not 0 <= threshold <= 1:
            raise NeuronforgeError(
                f"--threshold must be a share of the total sensitivity in [0, 1], got {threshold}",
                "e.g. --threshold 0.2",
            )
        total = sum(scores[b.name] for b in choosable) or 1.0
        kept |= {b.name for b in choosable if scores[b.name] / total >= threshold and scores[b.name] > 0}
    spent = sum(extra_bytes(b) for b in choosable if b.name in kept)
    return Choice(_ordered(kept, blocks), spent, budget)
