"""Stage 1's own accuracy measure: emulated models scored against the bf16 reference on the held-out splits.

The decisions `quantize` makes after tuning (AutoRound or RTN for the whole model, which blocks an accuracy target
keeps in bf16) are taken on a **validation** split and reported on a **test** split no decision ever reads. Both
halve each held-out document (assets/texts.py `validation_test_splits`), so neither shares text with calibration.
A score is the mean per-token KL(bf16 reference || candidate) in nats, top-1 agreement and perplexity recovery,
through the emulator of Neuron numerics with the deployment's KV cache and tp degree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from neuronforge.assets.texts import evaluation_windows, resolve_splits, validation_test_splits
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.dtypes import KvDtype, QuantDtype
from neuronforge.neuron.numerics.emulation_spec import EmulationSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from neuronforge.core.devices import DeviceRequest
    from neuronforge.neuron.numerics.emulate import EmulatedModel

WINDOW = 256  # tokens per scored window: the first half is prefill, the rest decodes through the KV cache
BATCH = 4  # windows per forward pass
Split = Literal["validation", "test"]
SPLITS: tuple[Split, ...] = ("validation", "test")
# Tokens scored per text (at most; fewer where a half is shorter). Validation decides, so it gets 4 windows: per-window
# KL varies a lot (SmolLM2, cpu-demo int8: 0.0059-0.0116 for one model over 8 windows of one text), and on 2 windows a
# text the AutoRound-vs-RTN check once chose RTN where 20 windows and the test split both showed AutoRound 3-10% better.
SPLIT_TOKENS: dict[Split, int] = {"validation": 4 * WINDOW, "test": 2 * WINDOW}


@dataclass(frozen=True)
class Scores:
    """One model's figures against the bf16 reference on one split."""

    kl: float
    top1: float
    ppl_recovery: float  # percent of the reference's perplexity kept (100 = no loss)


def split_windows(tokenizer: PreTrainedTokenizerBase, text: Path | None) -> dict[Split, dict[str, torch.Tensor]]:
    """The validation and test windows of each held-out text (the head `SPLIT_TOKENS[split]` of each half)."""
    validation, test = validation_test_splits(resolve_splits(text).evaluation)
    halves: dict[Split, dict[str, str]] = {"validation": validation, "test": test}
    try:
        return {
            split: {
                name: evaluation_windows(tokenizer, body, WINDOW, SPLIT_TOKENS[split]) for name, body in texts.items()
            }
            for split, texts in halves.items()
        }
    except NeuronforgeError as exc:
        raise NeuronforgeError(
            f"stage 1 scores {WINDOW}-token windows on each half of the held-out text: {exc.what}",
            "supply more text (--text): its last quarter is held out and halved into validation and test",
        ) from None


class SplitScorer:
    """The bf16 reference's logits on the validation and test windows (bf16 weights and KV cache, the deployment's
    tp degree), measured once, before the model to quantize is loaded: the reference is a whole bf16 model of its
    own, so it is never in memory beside it."""

    def __init__(
        self,
        source: Path,
        windows: dict[Split, dict[str, torch.Tensor]],
        tp_degree: int,
        device: torch.device | DeviceRequest = "auto",
    ) -> None:
        from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated

        start = time.perf_counter()
        self.windows = windows
        reference = load_emulated(source, EmulationSpec(tp_degree=tp_degree), device)
        reference.operands_per_call()  # (a few passes: no fp32 copy of every weight)
        self.reference = {split: logits(reference, w) for split, w in windows.items()}
        self.perplexity = {split: _perplexity(self.reference[split], windows[split]) for split in windows}
        self.seconds = time.perf_counter() - start

    def scores(self, emulated: EmulatedModel, split: Split) -> Scores:
        """`emulated` against the reference on `split`, one text's logits in memory at a time (a split's are 0.3 GB
        in bf16 at SmolLM2's vocabulary, 0.8 GB at Llama 3's; the reference's are held already)."""
        from neuronforge.neuron.numerics.emulate import perplexity_from_nll, token_nll
        from neuronforge.pipeline.evaluate.metrics import divergence, recovery

        nll: list[torch.Tensor] = []

        def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for name, ids in self.windows[split].items():
                measured = logits(emulated, {name: ids})[name]
                nll.append(token_nll(measured, ids))
                yield from zip(self.reference[split][name], measured, strict=True)

        measured = divergence(pairs())
        ppl = perplexity_from_nll(nll)
        return Scores(measured.kl, measured.agreement, recovery(self.perplexity[split], ppl, higher_is_better=False))

    def tokens(self) -> dict[str, dict[str, int]]:
        return {
            split: {name: int(ids.numel()) for name, ids in windows.items()} for split, windows in self.windows.items()
        }


def _perplexity(logits_by_text: dict[str, torch.Tensor], windows: dict[str, torch.Tensor]) -> float:
    from neuronforge.neuron.numerics.emulate import perplexity_from_nll, token_nll

    return perplexity_from_nll([token_nll(logits_by_text[name], ids) for name, ids in windows.items()])


def deployed_spec(dtype: str | None, kv: str, kept: Sequence[str], tp_degree: int) -> EmulationSpec:
    """What the device computes for a candidate: its weight dtype (None: bf16) and bf16 blocks, the deployment's KV
    cache and tp degree."""
    return EmulationSpec(
        dtype=cast(QuantDtype | None, dtype),
        kv=cast(KvDtype, kv),
        modules_to_not_convert=tuple(kept),
        tp_degree=tp_degree,
    )


def logits(emulated: EmulatedModel, windows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each text's windows through `emulated`, `BATCH` at a time, as bf16 logits on the CPU."""
    import torch

    return {
        name: torch.cat([emulated.device_logits(batch).cpu() for batch in ids.split(BATCH)])
        for name, ids in windows.items()
    }
