"""NxDI's direct-cast fp8 (e4m3) KV cache, emulated inside one transformers attention call.

On the device (NxDI, SDK 2.28, `kv_quant_config` direct cast), post-RoPE K and V are cast to
float8_e4m3fn when written to the cache. Context encoding (prefill) attends over the fresh bf16 K/V;
each decode step reads the *past* tokens back from the cache (fp8 -> bf16) while its own K/V stay bf16.

`fp8_kv_attention` reproduces that for a whole teacher-forced sequence in one pass: query rows at
absolute positions >= prefill_len see keys j < i through the fp8 round trip and key i exactly; rows
before prefill_len are plain sdpa (bit-identical to the unmodified model). With a cache and q_len == 1
the same rule is exactly one decode step. See docs/nxd-numerics.md ("fp8 KV cache") for the NxDI source lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from neuronforge.neuron.numerics.grid import E4M3_NEURON_MAX

ATTENTION_NAME = "neuronforge_fp8_kv"
STATE_KWARG = "neuronforge_kv"


@dataclass
class KVRisk:
    """K/V values written to the cache so far, and how many exceed Neuron's e4m3 range (|x| > 240).

    Beyond 240 the device's behaviour is undocumented (NaN per NxD's README) while torch's e4m3fn keeps
    values up to 448 and gives NaN from 480, so the emulation is exact only while `over == 0`.
    """

    total: int = 0
    over: int = 0
    max_abs: float = 0.0

    @property
    def fraction(self) -> float:
        return self.over / self.total if self.total else 0.0

    def observe(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            magnitude = tensor.detach().abs()
            self.total += magnitude.numel()
            self.over += int((magnitude > E4M3_NEURON_MAX).sum())
            if magnitude.numel():
                self.max_abs = max(self.max_abs, float(magnitude.max()))

    def describe(self) -> str:
        return (
            f"{self.over}/{self.total} K/V values ({self.fraction:.2e}) exceed |240| (max |x| {self.max_abs:.1f}); "
            + ("emulation exact" if self.over == 0 else "Neuron behaviour is undefined for those values")
        )


@dataclass
class KVState:
    """Per-forward settings the attention function reads from its kwargs."""

    prefill_len: int
    risk: KVRisk


def fp8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """Direct cast to e4m3 and back, as NxDI's cache write + read (no scale, no clamp)."""
    return x.to(torch.float8_e4m3fn).to(x.dtype)


def _decode_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Attention for query rows that run as decode steps: past K/V via fp8, each row's own K/V exact.

    Rounded as NxDI's token generation rounds it (attention_base.py:2031-2071, attention/utils.py:252-270):
    Q@K^T as a bf16 matmul, divided by sqrt(head_dim) in bf16, then fp32 for the softmax over the prior
    (cached) and active (own) keys together; the probabilities go back to bf16, and the prior and active
    halves are two bf16 matmuls whose bf16 results are added. GEMMs run in fp32 on the bf16 operands and round
    once (the device's fp32 accumulation, in another order).
    Shapes: query [b, h, r, d]; key/value [b, h, kv, d] (already repeated for GQA); positions [r]. Returns [b, r, h, d].
    """
    dtype = query.dtype
    q, kq, vq = query.float(), fp8_roundtrip(key).float(), fp8_roundtrip(value).float()
    k, v = key.float(), value.float()
    head_dim = query.shape[-1]
    divisor = math.sqrt(head_dim) if math.isclose(scaling, head_dim**-0.5, rel_tol=1e-12) else 1.0 / scaling
    cols = torch.arange(key.shape[2], device=key.device)
    own = cols[None, :] == positions[:, None]  # [r, kv]
    visible = cols[None, :] <= positions[:, None]
    prior = (q @ kq.transpose(-1, -2)).to(dtype) / divisor
    active = (q @ k.transpose(-1, -2)).to(dtype) / divisor
    scores = torch.where(own, active, prior).float()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            visible = visible & attention_mask
        else:
            scores = scores + attention_mask.float()
    scores = scores.masked_fill(~visible, float("-inf"))
    exp = torch.exp(scores - scores.amax(dim=-1, keepdim=True))  # manual_softmax: one max and one denominator
    probs = (exp / exp.sum(dim=-1, keepdim=True)).to(dtype).float()
    out_prior = ((probs * ~own) @ vq).to(dtype)
    out_active = ((probs * own) @ v).to(dtype)
    return (out_prior + out_active).transpose(1, 2)


def fp8_kv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers AttentionInterface function: sdpa for prefill rows, fp8-cache reads for decode rows."""
    state = kwargs.pop(STATE_KWARG, None)
    if not isinstance(state, KVState):
        raise RuntimeError(f"{ATTENTION_NAME} needs a KVState in the '{STATE_KWARG}' forward kwarg")
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    q_len, kv_len = query.shape[2], key.shape[2]
    state.risk.observe(key[:, :, -q_len:], value[:, :, -q_len:])  # what this call writes to the cache
    first = kv_len - q_len  # absolute position of query row 0
    start = max(state.prefill_len - first, 0)
    if start >= q_len:
        return out, None
    groups = query.shape[1] // key.shape[1]
    positions = torch.arange(first + start, kv_len, device=query.device)
    mask = attention_mask[:, :, start:] if attention_mask is not None else None
    rows = _decode_rows(
        query[:, :, start:],
        repeat_kv(key, groups),
        repeat_kv(value, groups),
        positions,
        mask,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
    )
    out = out.clone()
    out[:, start:] = rows
    return out, None


def register_attention() -> None:
    """Make ATTENTION_NAME a valid `attn_implementation` (sdpa's mask, fp8-cache attention); idempotent."""
    AttentionInterface.register(ATTENTION_NAME, fp8_kv_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
