"""N2: what the emulator rounds like the device beyond single-rank GEMMs: row-parallel partial sums at tp > 1 and the
token-generation attention scores (bf16 matmuls, fp32 softmax), checked against transcriptions of NxD/NxDI's code."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import load_model
from neuronforge.neuron.numerics.emulate import EmulationSpec, emulate
from neuronforge.neuron.numerics.kv_cache import _decode_rows, fp8_roundtrip
from neuronforge.neuron.numerics.qlinear import Bf16Linear, NeuronQuantLinear

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def _linear(out_features: int, in_features: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.05)
        linear.weight[:, ::7] *= 8.0
    return linear.to(torch.bfloat16)


@torch.inference_mode()
def test_row_parallel_scales_and_rounds_each_rank_before_the_all_reduce() -> None:
    """NxD QuantizedRowParallel (quantization_layers.py:937-964): per rank, bf16 GEMM on its input slice, scale, round
    to bf16; the all-reduce then sums the ranks' bf16 outputs."""
    linear = _linear(48, 96, seed=0)
    x = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    one = NeuronQuantLinear.from_linear(linear, "int8")
    two = NeuronQuantLinear.from_linear(linear, "int8", tp_degree=2)
    codes, scale = one.codes.float(), one.scale.reshape(1, -1)

    partials = []
    for rank in range(2):  # written out by hand: ranks hold in_features [0, 48) and [48, 96)
        cols = slice(48 * rank, 48 * (rank + 1))
        partial = (x[..., cols].float() @ codes[:, cols].T).to(torch.bfloat16)
        partials.append((partial.float() * scale).to(torch.bfloat16))
    expected = (partials[0].float() + partials[1].float()).to(torch.bfloat16)
    assert torch.equal(two(x), expected)

    single = ((x.float() @ codes.T).to(torch.bfloat16).float() * scale).to(torch.bfloat16)
    assert torch.equal(one(x), single)
    assert not torch.equal(two(x), one(x))  # the per-rank rounding is visible

    bf16_two = Bf16Linear(linear, tp_degree=2)
    w = linear.weight.float()
    halves = [
        (x[..., 48 * r : 48 * (r + 1)].float() @ w[:, 48 * r : 48 * (r + 1)].T).to(torch.bfloat16) for r in (0, 1)
    ]
    assert torch.equal(bf16_two(x), (halves[0].float() + halves[1].float()).to(torch.bfloat16))


@torch.inference_mode()
def test_emulate_shards_only_row_parallel_layers_and_names_the_tp(tiny_llama_dir: Path) -> None:
    spec = EmulationSpec(dtype="int8", kv="fp8", tp_degree=2, modules_to_not_convert=("lm_head", "layers.1.mlp"))
    model = emulate(load_model(tiny_llama_dir), spec).model
    layer0, layer1 = model.model.layers
    assert layer0.self_attn.o_proj.tp_degree == layer0.mlp.down_proj.tp_degree == 2
    assert (
        isinstance(layer1.mlp.down_proj, Bf16Linear) and layer1.mlp.down_proj.tp_degree == 2
    )  # kept bf16, still split
    assert layer0.self_attn.q_proj.tp_degree == layer0.mlp.up_proj.tp_degree == 1  # column-parallel: unaffected
    assert "11 of 15 Linears quantized" in spec.describe(11, 15) and "tp_degree 2" in spec.describe(11, 15)
    with pytest.raises(NeuronforgeError, match="tp_degree 0"):
        EmulationSpec(tp_degree=0)


def _nxdi_token_generation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """NxDI's decode attention for one new token (attention_base.py:2025-2071, utils.py:252-270), in torch bf16 ops.

    q [b, h, 1, d]; k, v [b, h, s, d] with the new token last; the prior tokens come from the fp8 cache.
    """
    head_dim = q.shape[-1]
    k_prior, v_prior = fp8_roundtrip(k[:, :, :-1]), fp8_roundtrip(v[:, :, :-1])
    k_active, v_active = k[:, :, -1:], v[:, :, -1:]
    prior_scores = torch.matmul(q, k_prior.transpose(2, 3)) / math.sqrt(head_dim)
    prior_scores = prior_scores.to(torch.float32)
    active_scores = (torch.matmul(q, k_active.transpose(2, 3)) / math.sqrt(head_dim)).to(torch.float32)
    max_score = torch.maximum(torch.max(prior_scores, dim=-1, keepdim=True)[0], active_scores)
    exp_prior, exp_active = torch.exp(prior_scores - max_score), torch.exp(active_scores - max_score)
    denominator = exp_prior.sum(dim=-1, keepdim=True) + exp_active.sum(dim=-1, keepdim=True)
    softmax_prior, softmax_active = (exp_prior / denominator).to(q.dtype), (exp_active / denominator).to(q.dtype)
    return torch.matmul(softmax_prior, v_prior) + torch.matmul(softmax_active, v_active)


@torch.inference_mode()
def test_decode_attention_rounds_like_nxdi_token_generation() -> None:
    g = torch.Generator().manual_seed(4)
    b, h, s, d = 2, 3, 9, 16
    q, k, v = (torch.randn(b, h, n, d, generator=g).mul(2.0).to(torch.bfloat16) for n in (1, s, s))
    expected = _nxdi_token_generation(q, k, v)
    got = _decode_rows(q, k, v, torch.tensor([s - 1]), None, d**-0.5).transpose(1, 2)
    assert got.dtype == torch.bfloat16
    mismatched = (got != expected).float().mean().item()
    ulp = torch.finfo(torch.bfloat16).eps * expected.abs().clamp(min=1e-2)
    assert mismatched <= 0.02 and torch.all((got - expected).abs() <= ulp)  # fp32 GEMM order only

    # The previous formula (fp32 scores and one final rounding) is measurably different.
    kq, vq = fp8_roundtrip(k[:, :, :-1]).float(), fp8_roundtrip(v[:, :, :-1]).float()
    keys, values = torch.cat([kq, k[:, :, -1:].float()], 2), torch.cat([vq, v[:, :, -1:].float()], 2)
    probs = torch.softmax(q.float() @ keys.transpose(2, 3) * d**-0.5, dim=-1)
    fp32_scores = (probs @ values).to(torch.bfloat16)
    assert (fp32_scores != expected).float().mean().item() > 5 * max(mismatched, 0.01)


@torch.inference_mode()
def test_tp_changes_the_emulated_logits_a_little(make_tiny_llama: Callable[..., Path]) -> None:
    folder = make_tiny_llama("tinytp", seed=7)
    ids = torch.randint(3, 512, (1, 20), generator=torch.Generator().manual_seed(2))
    logits = {tp: emulate(load_model(folder), EmulationSpec(dtype="int8", tp_degree=tp)).logits(ids) for tp in (1, 2)}
    difference = (logits[2] - logits[1]).abs()
    assert difference.max() > 0 and difference.max() < 0.05 * logits[1].abs().max()
