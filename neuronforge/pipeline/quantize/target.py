"""Accuracy target (`--target-kl`): the fewest extra bf16 weight bytes whose emulated KL meets the target.

Every candidate is measured, not predicted: the model is quantized once (every choosable block), then a
candidate keeps a set of blocks in bf16 by swapping those blocks' Linears, in one emulated model of Neuron numerics
(deployment's weight dtype, KV cache and tp degree), for the source model's bf16 Linears; nothing is tuned again.
KL is the mean per-token KL(bf16 reference || candidate) on a validation split; the chosen set is then scored once
on a test split the search never saw (scoring.py: both halve each held-out document, so neither overlaps the
calibration text).

The candidates are the budget rule's own sets (selection.py `fill_budget`: blocks by sensitivity per extra byte,
filled into a byte budget, skipping what does not fit), so the default `--max-extra-memory 0.10` set is one of them
and is measured first. The search bisects the budget, in steps of the smallest block's extra bytes: the
all-quantized model first, then the middle of the open interval, knowing the all-bf16-weights end (the floor: what
the KV cache alone costs) meets any target the floor allows. About log2(total extra bytes / step) + 2 forward passes
over the validation windows, fewer where two budgets give the same set. Every measured set becomes a row of the
frontier (frontier.json/.md/.png): kept blocks, weight bytes, KL, top-1 agreement, perplexity recovery, and the
cheapest inf2 instance that holds it; the cheapest row meeting the target is chosen, the default set included, so
the choice never keeps more bytes than the default where the default meets the target.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.dtypes import QuantDtype
from neuronforge.neuron.numerics.module_names import block_of
from neuronforge.neuron.planner.plan import load_model_shape, smallest_for
from neuronforge.neuron.planner.weight_memory import weight_memory
from neuronforge.pipeline.quantize.scoring import Scores, Split, SplitScorer, deployed_spec
from neuronforge.pipeline.quantize.selection import by_value, extra_bytes, fill_budget, select

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from neuronforge.neuron.numerics.emulate import EmulatedModel
    from neuronforge.neuron.planner.plan import ModelShape
    from neuronforge.pipeline.quantize.sensitivity import Block

FRONTIER_JSON = "frontier.json"
FRONTIER_MD = "frontier.md"
FRONTIER_PNG = "frontier.png"


@dataclass(frozen=True)
class Point:
    """One measured candidate of the frontier."""

    kept: list[str]  # bf16 blocks (modules_to_not_convert), forced ones included
    origin: str  # "search" (a budget the bisection probed), "budget default" (--max-extra-memory 0.10) or "floor"
    extra_bytes: int  # bf16 bytes over the all-quantized model's choosable blocks
    weight_bytes: int  # the whole model's weights as NxD stores them
    validation: Scores
    meets: bool
    instance: str | None  # cheapest inf2 instance that holds it (neuron/plan.py), None: none does
    tp_degree: int | None
    usd_per_hour: float | None  # EC2 on-demand


@dataclass
class Frontier:
    target_kl: float
    kv: str
    tp_degree: int  # the emulated deployment's (row-parallel partial sums are rounded per rank)
    floor: Scores  # all weights bf16, the deployment's KV cache (validation)
    ranking: list[str]
    points: list[Point] = field(default_factory=list)
    chosen: Point | None = None
    budget: Point | None = None  # the budget rule's default set (max_extra_memory 0.10), a candidate like the rest
    test: Scores | None = None  # the chosen set on the test split
    floor_test: Scores | None = None
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "target_kl": self.target_kl,
            "kv": self.kv,
            "tp_degree": self.tp_degree,
            "metric": "mean per-token KL(bf16 weights and KV || candidate) in nats, emulated Neuron numerics",
            "floor": {"validation": asdict(self.floor), "test": asdict(self.floor_test) if self.floor_test else None},
            "ranking": self.ranking,
            "points": [asdict(p) for p in sorted(self.points, key=lambda p: p.extra_bytes)],
            "chosen": asdict(self.chosen) if self.chosen else None,
            "chosen_test": asdict(self.test) if self.test else None,
            "budget_default": asdict(self.budget) if self.budget else None,
            "tokens": self.tokens,
            "search": {
                "method": "bisection on the budget rule's byte budget, the default set measured first",
                "measured": len(self.points),
                "seconds": self.seconds,
            },
        }


def bisect_least(count: int, meets: Callable[[int], bool]) -> int:
    """The smallest k in 0..count found by bisection with `meets(k)` true, `meets(count)` assumed true (the floor
    was checked). Probes k = 0 first; each probe is one measurement. Exact when the KL falls as k grows; otherwise
    the k it returns still meets the target (it was measured), only maybe not the least."""
    if meets(0):
        return 0
    failing, meeting = 0, count
    while meeting - failing > 1:
        middle = (failing + meeting) // 2
        if meets(middle):
            meeting = middle
        else:
            failing = middle
    return meeting


def cheapest_meeting(points: Sequence[Point]) -> Point:
    """The point `run` deploys: the lowest hourly price, then the fewest weight bytes, of those meeting the target."""
    meeting = [p for p in points if p.meets]
    return min(meeting, key=lambda p: (p.usd_per_hour if p.usd_per_hour is not None else float("inf"), p.weight_bytes))


class TargetSearch:
    """The reference, the floor and the bf16 Linears, measured before any tuning; `search` after it."""

    def __init__(
        self,
        scorer: SplitScorer,
        source: Path,
        target_kl: float,
        dtype: str,
        kv: str,
        tp_degree: int,
        deployment: dict[str, Any],
    ) -> None:
        from neuronforge.neuron.numerics.emulate import load_emulated

        start = time.perf_counter()
        self.scorer, self.target_kl, self.dtype, self.kv, self.tp = scorer, target_kl, dtype, kv, tp_degree
        self.deployment = deployment
        self.shape: ModelShape = load_model_shape(source)
        self.bf16: EmulatedModel = load_emulated(source, deployed_spec(None, kv, (), tp_degree))
        self.floor = scorer.scores(self.bf16, "validation")
        self.seconds = scorer.seconds + time.perf_counter() - start
        if target_kl < self.floor.kl:
            raise NeuronforgeError(
                f"--target-kl {target_kl:g} is below the floor: with every weight in bf16 the {kv} KV cache alone "
                f"costs KL {self.floor.kl:.5f} on the validation text",
                f"ask for --target-kl >= {self.floor.kl:.5f}"
                + (", or deploy with --kv bf16 (no KV cache error, 2x the cache memory)" if kv == "fp8" else ""),
            )

    def search(self, model: nn.Module, blocks: Sequence[Block], scores: dict[str, float]) -> Frontier:
        """Measure the budget rule's sets on `model` (quantized in place, every choosable block; left untouched): its
        default set first, then a bisection on the budget; choose the cheapest set meeting the target."""
        from neuronforge.neuron.numerics.emulate import emulate

        start = time.perf_counter()
        forced = [b.name for b in blocks if b.forced]
        ranked = by_value(blocks, scores)
        frontier = Frontier(self.target_kl, self.kv, self.tp, self.floor, [b.name for b in ranked])
        quantized = emulate(
            cast("PreTrainedModel", copy.deepcopy(model)),
            deployed_spec(self.dtype, self.kv, forced, self.tp),
            device=self.bf16.device,
        )
        own = {name: quantized.model.get_submodule(name) for name in quantized.converted}
        measured: dict[frozenset[str], Point] = {}
        everything = frozenset(b.name for b in ranked)

        def swapped(keep: set[str]) -> list[str]:
            """Put the bf16 Linears of the blocks `keep` into the quantized model."""
            names = [name for name in own if block_of(name) in keep]
            for name in names:
                _replace(quantized.model, name, self.bf16.model.get_submodule(name))
            return names

        def scored(keep: set[str], split: Split) -> Scores:
            names = swapped(keep)
            try:
                return self.scorer.scores(quantized, split)
            finally:
                for name in names:
                    _replace(quantized.model, name, own[name])

        def measure(chosen: frozenset[str], origin: str) -> Point:
            if chosen not in measured:
                validation = self.floor if chosen == everything else scored(set(chosen), "validation")
                kept = [b.name for b in blocks if b.name in chosen or b.forced]
                row = smallest_for(self.shape, cast(QuantDtype, self.dtype), self.kv == "fp8", kept, **self.deployment)
                measured[chosen] = Point(
                    kept=kept,
                    origin="floor" if chosen == everything else origin,
                    extra_bytes=sum(extra_bytes(b) for b in ranked if b.name in chosen),
                    weight_bytes=weight_memory(self.shape.shapes, cast(QuantDtype, self.dtype), kept).total_bytes,
                    validation=validation,
                    meets=validation.kl <= self.target_kl,
                    instance=row.instance if row else None,
                    tp_degree=row.tp if row else None,
                    usd_per_hour=row.price.ec2 if row else None,
                )
                err_console.print(
                    f"target KL {self.target_kl:g}: {len(chosen)} of {len(ranked)} blocks bf16 "
                    f"(+{measured[chosen].extra_bytes / 2**20:.1f} MiB) -> validation KL {validation.kl:.5f} "
                    f"({'meets' if measured[chosen].meets else 'above'})"
                )
            return measured[chosen]

        default = set(select(list(blocks), scores, "budget").kept) - set(forced)  # (its default max_extra_memory)
        frontier.budget = measure(frozenset(default), "budget default")
        step = max(1, min((extra_bytes(b) for b in ranked), default=1))
        steps = -(-sum(extra_bytes(b) for b in ranked) // step)

        def meets(k: int) -> bool:
            chosen = everything if k >= steps else frozenset(fill_budget(ranked, scores, k * step))
            return measure(chosen, "search").meets

        bisect_least(steps, meets)
        measure(everything, "floor")  # the floor is a point of the frontier too
        frontier.points = list(measured.values())
        frontier.chosen = cheapest_meeting(frontier.points)
        # The chosen set on text the search never read (and the floor there, for scale).
        frontier.test = scored(set(frontier.chosen.kept), "test")
        frontier.floor_test = self.scorer.scores(self.bf16, "test")
        frontier.tokens = self.scorer.tokens()
        frontier.seconds = self.seconds + time.perf_counter() - start
        return frontier


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    from neuronforge.neuron.numerics.qlinear import replace_module

    replace_module(model, name, module)


def frontier_markdown(frontier: Frontier) -> str:
    """The frontier as a table, cheapest deployment meeting the target marked."""

    def mb(n: int) -> str:
        return f"{n / 2**20:.1f}"

    lines = [
        f"# Accuracy/cost frontier: target KL {frontier.target_kl:g}, {frontier.kv} KV cache",
        "",
        f"Floor (all weights bf16, {frontier.kv} KV): validation KL {frontier.floor.kl:.5f}"
        + (f", test KL {frontier.floor_test.kl:.5f}" if frontier.floor_test else ""),
        "",
        "| bf16 blocks | extra MiB | weights MiB | validation KL | top-1 | ppl recovery % | meets "
        "| smallest inf2 | $/h |",
        "|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for p in sorted(frontier.points, key=lambda p: p.extra_bytes):
        marks = ([p.origin] if p.origin != "search" else []) + (["**chosen**"] if p is frontier.chosen else [])
        label = f"{len(p.kept)} ({', '.join(marks)})" if marks else str(len(p.kept))
        price = f"{p.usd_per_hour:.2f}" if p.usd_per_hour is not None else "n/a"
        lines.append(
            f"| {label} | {mb(p.extra_bytes)} | {mb(p.weight_bytes)} "
            f"| {p.validation.kl:.5f} | {p.validation.top1:.4f} | {p.validation.ppl_recovery:.2f} "
            f"| {'yes' if p.meets else 'no'} | {p.instance or 'none'}{f' (tp {p.tp_degree})' if p.tp_degree else ''} "
            f"| {price} |"
        )
    if frontier.chosen is not None and frontier.test is not None:
        lines += [
            "",
            f"Chosen: {len(frontier.chosen.kept)} bf16 blocks ({', '.join(frontier.chosen.kept) or 'none'}); "
            f"validation KL {frontier.chosen.validation.kl:.5f}, test KL {frontier.test.kl:.5f} "
            f"(top-1 {frontier.test.top1:.4f}) on text the search never read.",
        ]
    if frontier.budget is not None:
        b = frontier.budget
        lines.append(
            f"The budget rule's default (--max-extra-memory 0.10, what quantize keeps without a target) keeps "
            f"{len(b.kept)} bf16 blocks: +{mb(b.extra_bytes)} MiB, validation KL {b.validation.kl:.5f}."
        )
    lines.append(
        f"Search: {len(frontier.points)} candidates measured (bisection on the budget rule's byte budget), "
        f"{frontier.seconds:.0f} s including the reference and the floor."
    )
    return "\n".join(lines) + "\n"
