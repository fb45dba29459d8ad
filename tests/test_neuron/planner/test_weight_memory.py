"""Weight accounting checked by hand on the 2-layer tiny Llama (hidden 64, 4 heads, 2 kv heads, mlp 128, vocab 512)."""

from __future__ import annotations

import pytest

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.planner.weight_memory import checkpoint_shapes, format_bytes, weight_memory

# Per layer: q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128.
LINEAR_PARAMS_PER_LAYER = 4096 + 2048 + 2048 + 4096 + 8192 + 8192 + 8192  # 36864
OUT_ROWS_PER_LAYER = 64 + 32 + 32 + 64 + 128 + 128 + 64  # 512 fp32 scales
NORMS = 2 * (2 * 64) + 64  # input/post-attention norms per layer + final norm
EMBED = 512 * 64  # and an lm_head of the same shape on the device, though tied in HF


def test_bf16_counts_every_tensor_and_a_separate_lm_head(tiny_llama_dir):
    shapes = checkpoint_shapes(tiny_llama_dir)
    assert "lm_head.weight" not in shapes  # tied: HF stores it once
    mem = weight_memory(shapes, None)
    expected = (2 * LINEAR_PARAMS_PER_LAYER + NORMS + 2 * EMBED) * 2
    assert mem.total_bytes == mem.bf16_bytes == expected == 279168
    assert mem.percent_of_bf16 == 100.0
    assert mem.quantized_linears == 0 and mem.bf16_linears == 15


def test_int8_all_layers_but_the_tied_lm_head(tiny_llama_dir):
    mem = weight_memory(checkpoint_shapes(tiny_llama_dir), "int8", ["lm_head"])
    codes = 2 * LINEAR_PARAMS_PER_LAYER  # 1 byte each
    scales = 2 * OUT_ROWS_PER_LAYER * 4
    bf16 = (NORMS + 2 * EMBED) * 2
    assert mem.by_kind == {"codes": codes, "scales": scales, "bf16": bf16}
    assert mem.total_bytes == 73728 + 4096 + 131712 == 209536
    assert mem.quantized_linears == 14 and mem.bf16_linears == 1
    assert mem.percent_of_bf16 == pytest.approx(100 * 209536 / 279168)


def test_selective_keeps_excluded_block_in_bf16(tiny_llama_dir):
    mem = weight_memory(checkpoint_shapes(tiny_llama_dir), "f8e4m3", ["lm_head", "layers.0.mlp"])
    mlp0 = 3 * 8192
    assert mem.by_kind["codes"] == 2 * LINEAR_PARAMS_PER_LAYER - mlp0
    assert mem.by_kind["scales"] == (2 * OUT_ROWS_PER_LAYER - (128 + 128 + 64)) * 4
    assert mem.by_kind["bf16"] == (NORMS + 2 * EMBED + mlp0) * 2
    assert mem.total_bytes == 232832


def test_quantized_lm_head_and_per_tensor_scales(tiny_llama_dir):
    shapes = checkpoint_shapes(tiny_llama_dir)
    per_channel = weight_memory(shapes, "int8")
    assert per_channel.by_kind["codes"] == 2 * LINEAR_PARAMS_PER_LAYER + EMBED
    assert per_channel.by_kind["scales"] == (2 * OUT_ROWS_PER_LAYER + 512) * 4
    per_tensor = weight_memory(shapes, "int8", qtype="per_tensor_symmetric")
    assert per_tensor.by_kind["scales"] == 15 * 4


def test_biases_bf16_for_int8_dropped_for_fp8():
    shapes = {
        "model.embed_tokens.weight": (10, 4),
        "model.layers.0.self_attn.q_proj.weight": (4, 4),
        "model.layers.0.self_attn.q_proj.bias": (4,),
        "model.norm.weight": (4,),
        "lm_head.weight": (10, 4),
    }
    int8 = weight_memory(shapes, "int8", ["lm_head"])
    fp8 = weight_memory(shapes, "f8e4m3", ["lm_head"])
    assert int8.by_kind == {"codes": 16, "scales": 16, "bf16": (40 + 4 + 40 + 4) * 2}
    assert fp8.by_kind == {"codes": 16, "scales": 16, "bf16": (40 + 4 + 40) * 2}
    assert int8.bf16_bytes == (40 + 16 + 4 + 4 + 40) * 2


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(NeuronforgeError, match="no safetensors"):
        checkpoint_shapes(tmp_path)
    with pytest.raises(NeuronforgeError, match="neither lm_head"):
        weight_memory({"model.norm.weight": (4,)}, None)


def test_format_bytes_uses_decimal_units():
    assert format_bytes(24_100_000_000) == "24.10 GB"
    assert format_bytes(209536) == "209.54 kB"
    assert format_bytes(12) == "12 B"
