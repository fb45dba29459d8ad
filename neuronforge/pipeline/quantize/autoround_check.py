"""AutoRound or RTN for the whole model: both versions scored through the emulator, the better one ships.

The per-block check (autoround_nxd.py) keeps each tuned block only where it reproduces the bf16 block better than
RTN on calibration windows it did not tune on. Local gains need not add up: at `cpu-fast` int8 it kept AutoRound on
23 of 30 SmolLM2 blocks and the model's held-out KL still came out 5% above RTN's (docs/accuracy-target.md). So
after tuning, the model as tuned and the model as NxD's own quantizer would round the source (RTN) are scored on
the validation split (scoring.py) with the deployment's KV cache and tp degree, and the lower KL ships; both are
scored on the test split too, which no decision reads, so the report shows whether the choice held on unseen text.

Cost: one emulated model beside the tuned one, no copy of it. The RTN model is loaded from the source folder a map
window at a time (`load_emulated`, codes only: 1 byte per parameter for int8/fp8, GEMM operands made per call, not
kept in fp32); the tuned model's scores come
from the same emulated model with the tuned Linears' codes put in place of RTN's. That is exact: every tuned
weight is grid-exact, so NxD re-derives these very codes from the checkpoint, and everything else in a tuned model
is the source's bf16 (auto-round changes nothing outside the tuned Linears).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neuronforge.core.progress import err_console
from neuronforge.pipeline.quantize.scoring import SPLITS, Scores, Split, SplitScorer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from neuronforge.core.devices import DeviceRequest
    from neuronforge.neuron.numerics.emulation_spec import EmulationSpec

Winner = Literal["autoround", "rtn"]


@dataclass(frozen=True)
class ModelChoice:
    """The tuned model and its RTN version against the bf16 reference, per split."""

    autoround: dict[Split, Scores]
    rtn: dict[Split, Scores]
    kept_bf16: tuple[str, ...]  # the blocks both models keep in bf16 (with a target: the forced ones only)
    seconds: float

    @property
    def winner(self) -> Winner:
        """Decided on validation only (a tie keeps AutoRound: it never lost there)."""
        return "autoround" if self.autoround["validation"].kl <= self.rtn["validation"].kl else "rtn"

    def to_json(self) -> dict[str, Any]:
        return {
            "definition": "the whole model as tuned and as RTN (NxD's rounding of the source), each scored through "
            "the emulator against the bf16 model on the validation split (decides) and the test split (reported "
            "only): mean per-token KL in nats, top-1 agreement, perplexity recovery %",
            "autoround": {split: asdict(scores) for split, scores in self.autoround.items()},
            "rtn": {split: asdict(scores) for split, scores in self.rtn.items()},
            "kept": self.winner,
            "modules_to_not_convert": list(self.kept_bf16),
            "seconds": round(self.seconds, 1),
        }


def compare_with_rtn(
    scorer: SplitScorer,
    source: Path,
    model: PreTrainedModel,
    tuned: Sequence[str],
    spec: EmulationSpec,
    device: torch.device | DeviceRequest = "auto",
) -> ModelChoice:
    """Score `source` rounded by RTN and `model` (its `tuned` Linears grid-exact, everything else the source's) with
    `spec`'s numerics (the weight dtype, the blocks kept bf16, the KV cache, the tp degree). `model` is not changed."""
    import torch

    from neuronforge.neuron.numerics.emulate import load_emulated
    from neuronforge.neuron.numerics.grid import quantize_weight
    from neuronforge.neuron.numerics.qlinear import NeuronQuantLinear

    assert spec.dtype is not None
    start = time.perf_counter()
    emulated = load_emulated(source, spec, device)
    emulated.operands_per_call()  # (beside the tuned model: no fp32 copy of every weight)
    rtn = {split: scorer.scores(emulated, split) for split in SPLITS}
    with torch.no_grad():
        for name in tuned:
            layer = typing.cast(NeuronQuantLinear, emulated.model.get_submodule(name))
            layer.load_codes(
                *quantize_weight(typing.cast(torch.nn.Linear, model.get_submodule(name)).weight, spec.dtype)
            )
    autoround = {split: scorer.scores(emulated, split) for split in SPLITS}
    choice = ModelChoice(autoround, rtn, spec.modules_to_not_convert, time.perf_counter() - start)
    err_console.print(
        f"AutoRound vs RTN, whole model: validation KL {autoround['validation'].kl:.5f} vs "
        f"{rtn['validation'].kl:.5f} -> keeping {'AutoRound' if choice.winner == 'autoround' else 'RTN'} "
        f"(test KL {choice.autoround['test'].kl:.5f} vs {choice.rtn['test'].kl:.5f})"
    )
    return choice
