"""The emulator on a tiny model of each supported family: bit-identical to transformers in bf16, RoPE equal to
NxDI's, Qwen2's biases where NxD keeps them (int8) and bf16 attention where its fp8 quantizer would drop them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from neuronforge.hf.folders import load_model
from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated
from neuronforge.neuron.numerics.qlinear import NeuronQuantLinear

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def tokens(n: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (n, seq), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_bf16_without_quantization_is_transformers_bit_for_bit(tiny_family_dir: Path) -> None:
    """`emulate --dtype none --kv bf16` with HF's own bf16 kernels is transformers' own forward, for every family."""
    from transformers import AutoModelForCausalLM

    ids = tokens()
    expected = AutoModelForCausalLM.from_pretrained(tiny_family_dir, dtype=torch.bfloat16)(ids).logits.float()
    emulated = load_emulated(tiny_family_dir, EmulationSpec(fast_bf16=False))
    assert emulated.converted == []
    assert torch.equal(emulated.logits(ids), expected)


# NxDI's RoPE frequencies, transcribed from aws-neuron/neuronx-distributed-inference@cd3abf3
# src/neuronx_distributed_inference/modules/attention/utils.py:323-328 (RotaryEmbedding.get_inv_freqs, used by the
# Qwen2, Qwen3 and Mistral classes and by Llama without rope_scaling) and models/llama/modeling_llama.py:1079-1096
# (Llama3RotaryEmbedding.get_inv_freqs, rope_type llama3); forward (utils.py:331-343, modeling_llama.py:1098-1111):
# fp32 inv_freq @ positions, cat(freqs, freqs), cos/sin, cast to the activations' dtype.
def nxdi_inv_freq(dim: int, base: float) -> torch.Tensor:
    freq_indices = torch.arange(0, dim, 2, dtype=torch.float)
    return 1.0 / (base ** (freq_indices / dim))


def nxdi_llama3_inv_freq(dim: int, base: float, factor: float, low: float, high: float, old: int) -> torch.Tensor:
    inv_freq = nxdi_inv_freq(dim, base)
    low_freq_wavelen = old / low
    high_freq_wavelen = old / high
    new_freqs = []
    for freq in inv_freq:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=inv_freq.dtype)


def nxdi_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    inv_freq_expanded = inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
    freqs = (inv_freq_expanded.float() @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@torch.inference_mode()
def test_rope_is_nxdi_s_bit_for_bit(tiny_family_dir: Path) -> None:
    """The emulated model's RoPE (transformers') equals what NxDI's class computes, llama3 scaling included."""
    model = load_emulated(tiny_family_dir, EmulationSpec()).model
    config = model.config
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if rope.get("rope_type", "default") == "llama3":
        expected = nxdi_llama3_inv_freq(
            head_dim,
            rope["rope_theta"],
            rope["factor"],
            rope["low_freq_factor"],
            rope["high_freq_factor"],
            rope["original_max_position_embeddings"],
        )
        assert not torch.equal(expected, nxdi_inv_freq(head_dim, rope["rope_theta"]))  # the scaling did something
    else:
        expected = nxdi_inv_freq(head_dim, rope["rope_theta"])
    rotary = model.model.rotary_emb
    assert torch.equal(rotary.inv_freq, expected)
    positions = torch.arange(200)[None, :]
    x = torch.zeros(1, 1, dtype=torch.bfloat16)
    cos, sin = rotary(x, positions)
    expected_cos, expected_sin = nxdi_cos_sin(expected, positions, torch.bfloat16)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)


@torch.inference_mode()
def test_qwen2_biases_survive_int8_and_keep_attention_bf16_with_fp8(make_tiny_family: Callable[..., Path]) -> None:
    """int8: NxD's torch dynamic Linear keeps the bias, added after the scaled GEMM (quantization_layers.py:698).
    fp8: NxD's QuantizedLinear stores no bias (quantization_utils.py:154-181), so NxDI must keep self_attn bf16."""
    folder = make_tiny_family("qwen2", seed=1)
    source = load_model(folder)
    int8 = load_emulated(folder, EmulationSpec(dtype="int8"))
    q_proj = int8.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, NeuronQuantLinear) and q_proj.bias is not None
    assert torch.equal(q_proj.bias, source.model.layers[0].self_attn.q_proj.bias)
    assert len(int8.converted) == 15
    fp8 = load_emulated(folder, EmulationSpec(dtype="f8e4m3"))
    assert fp8.spec.modules_to_not_convert == ("layers.0.self_attn", "layers.1.self_attn")
    assert sorted(fp8.converted) == sorted(
        [f"model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")] + ["lm_head"]
    )
    kept = fp8.model.model.layers[1].self_attn.k_proj
    assert not isinstance(kept, NeuronQuantLinear)
    assert torch.equal(kept.bias, source.model.layers[1].self_attn.k_proj.bias)
    assert "7 of 15 Linears quantized, 8 kept bf16" in fp8.spec.describe(len(fp8.converted), 15)


@torch.inference_mode()
def test_fp8_kv_cache_reaches_every_family_s_attention(tiny_family_dir: Path) -> None:
    """The fp8 KV attention (neuron/kv_cache.py) replaces each family's attention: context-encoding positions are the
    bf16 model's, every decode position reads fp8 K/V, and each layer's cache writes are counted."""
    ids, prefill = tokens(seq=20, seed=2), 9
    plain = load_emulated(tiny_family_dir, EmulationSpec(fast_bf16=False)).logits(ids, prefill_len=prefill)
    emulated = load_emulated(tiny_family_dir, EmulationSpec(kv="fp8", fast_bf16=False))
    got = emulated.logits(ids, prefill_len=prefill)
    assert torch.equal(got[:, :prefill], plain[:, :prefill])
    assert torch.all((got[:, prefill:] - plain[:, prefill:]).abs().amax(dim=-1) > 0)
    config = emulated.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert emulated.kv_risk.total == 2 * config.num_hidden_layers * ids.numel() * config.num_key_value_heads * head_dim
