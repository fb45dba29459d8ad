"""Accuracy metrics of a quantized variant against the bf16 reference, computed from logits.

All functions are pure: they take logits `[..., vocab]` in any float dtype (the emulator's are bf16) and compute
in fp32, so the same forward pass feeds perplexity (`neuron.numerics.emulate.perplexity_report`, the emulator's own),
KL divergence and top-1 agreement without running twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

# A weight-only 8-bit variant of a healthy model stays far inside these bounds (measured: KL < 0.05 nats,
# agreement > 0.9 on SmolLM2); a zeroed layer or a mis-scaled checkpoint lands far outside them.
MAX_PLAUSIBLE_KL = 0.25
MIN_PLAUSIBLE_AGREEMENT = 0.80


@dataclass(frozen=True)
class Divergence:
    """How far one variant's next-token distributions are from the reference's."""

    kl: float
    agreement: float


def kl_per_position(reference: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """KL(P_reference || P_variant) in nats at every position of `[..., vocab]` logits (fp32, any input dtype)."""
    ref_logp = torch.log_softmax(reference.float(), dim=-1)
    var_logp = torch.log_softmax(variant.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - var_logp)).sum(dim=-1)


def divergence(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Divergence:
    """Mean KL (0 for identical distributions) and top-1 agreement over every position of every (reference,
    variant) pair of logits. Taken a pair at a time, a window each: the evaluation's 3 x 1024 held-out tokens
    are 0.6 GB per fp32 copy of their logits at SmolLM2's 49152-token vocabulary, and a softmax needs several."""
    kl, same = [], []
    for reference, variant in pairs:
        kl.append(kl_per_position(reference, variant).flatten())
        same.append((reference.argmax(dim=-1) == variant.argmax(dim=-1)).flatten())
    return Divergence(max(torch.cat(kl).double().mean().item(), 0.0), torch.cat(same).double().mean().item())


def recovery(reference: float, variant: float, *, higher_is_better: bool) -> float:
    """Percent of the reference score kept: variant/reference, or reference/variant when lower is better
    (perplexity), so 100 means no loss and higher is always better."""
    if reference <= 0 or variant <= 0:
        raise ValueError(f"recovery needs positive scores, got reference={reference}, variant={variant}")
    return 100.0 * (variant / reference if higher_is_better else reference / variant)


def sanity_flags(divergence: Divergence, *, quantized: bool) -> list[str]:
    """Reasons a variant's numbers are implausible (empty when they look healthy).

    A quantized variant identical to bf16 was not really quantized; one far from bf16 is broken
    (a zeroed layer, wrong scales, a checkpoint off the grid) rather than merely lossy.
    """
    flags = []
    if divergence.kl > MAX_PLAUSIBLE_KL:
        flags.append(
            f"KL {divergence.kl:.3f} nats > {MAX_PLAUSIBLE_KL}: far beyond 8-bit weight error, variant looks broken"
        )
    if divergence.agreement < MIN_PLAUSIBLE_AGREEMENT:
        flags.append(f"top-1 agreement {divergence.agreement:.3f} < {MIN_PLAUSIBLE_AGREEMENT}: variant looks broken")
    if quantized and divergence.kl == 0.0 and divergence.agreement == 1.0:
        flags.append("identical to bf16: the variant was not quantized")
    return flags
