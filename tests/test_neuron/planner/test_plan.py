"""The deployment planner against hand-computed bytes (NxDI 0.8 sharding rules; docs/deployment-planner.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.config import build_neuron_config_spec
from neuronforge.neuron.planner.plan import (
    ModelShape,
    deployment_from,
    load_model_shape,
    plan,
    plan_row,
    render_markdown,
    require_fits,
)
from neuronforge.neuron.planner.weight_memory import (
    checkpoint_shapes,
    config_shapes,
    gqa_layout,
    kv_cache_bytes,
    rank_shapes,
    weight_memory,
)

CONFIGS = Path(__file__).parents[2] / "fixtures" / "configs"
# hidden 64, 8 query heads of 8, 2 KV heads, mlp 128, vocab 100, one layer.
SMALL = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
}


def _model(**overrides: object) -> ModelShape:
    return ModelShape.from_config({**SMALL, **overrides}, "small")


@pytest.mark.parametrize(
    ("heads", "kv", "tp", "kv_heads", "strategy"),
    [
        (32, 8, 2, 8, "kept"),  # 8 % 2 == 0: 4 per rank
        (32, 8, 8, 8, "kept"),
        (32, 8, 16, 16, "replicated"),  # 16 % 8 == 0: one KV head per rank, each twice
        (8, 2, 4, 4, "replicated"),
        (9, 3, 9, 9, "replicated"),  # SmolLM2 at tp 9
        (12, 4, 6, 12, "mha"),  # 6 % 4 != 0 and 4 % 6 != 0: GQA becomes MHA
        (4, 4, 2, 4, "kept"),  # MHA stays MHA
    ],
)
def test_gqa_rules_match_nxdi(heads: int, kv: int, tp: int, kv_heads: int, strategy: str) -> None:
    layout = gqa_layout(heads, kv, tp, head_dim=8)
    assert (layout.q_heads, layout.kv_heads, layout.strategy) == (heads, kv_heads, strategy)
    assert layout.kv_heads % tp == 0


def test_gqa_replication_doubles_k_v_weights_and_kv_cache() -> None:
    model = _model()
    layout = gqa_layout(8, 2, 4, 8)  # replicated: 4 KV heads, one per rank
    shapes = rank_shapes(model.shapes, layout, 4)
    k = "model.layers.0.self_attn.k_proj.weight"
    assert model.shapes[k] == (16, 64) and shapes[k] == (8, 64)  # 4 ranks x 8 rows = 2x the 16 rows
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (16, 64)
    assert shapes["model.layers.0.self_attn.o_proj.weight"] == (64, 16)  # row-parallel: columns split
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (64, 32)
    assert shapes["model.embed_tokens.weight"] == (100, 16)  # split along hidden
    assert shapes["lm_head.weight"] == (25, 64)
    assert shapes["model.norm.weight"] == (64,)  # replicated
    # bf16 per rank, by hand: q 1024 + k 512 + v 512 + o 1024 + gate/up/down 3 x 2048 + embed 1600
    # + lm_head 1600 + three norms 192 = 12608 values.
    assert weight_memory(shapes, None).total_bytes == 12608 * 2
    # KV per rank: 1 layer x K,V x batch 1 x 1 head x 128 positions x 8 dims x 2 bytes.
    per_rank = kv_cache_bytes(layout, 1, 4, 1, 128, kv_fp8=False)
    assert per_rank == 2 * 128 * 8 * 2 == 4096
    unreplicated_total = 1 * 2 * 1 * 2 * 128 * 8 * 2  # the model's own 2 KV heads
    assert 4 * per_rank == 2 * unreplicated_total


def test_convert_to_mha_holds_as_many_kv_heads_as_query_heads() -> None:
    layout = gqa_layout(12, 4, 6, 16)
    assert layout.kv_heads_per_rank(6) == 2
    assert kv_cache_bytes(layout, 3, 6, 2, 64, kv_fp8=True) == 3 * 2 * 2 * 2 * 64 * 16


def test_fp8_kv_is_exactly_half_the_bf16_kv() -> None:
    model = load_model_shape(CONFIGS / "llama-3-8b.json")
    fp8 = plan_row(model, deployment_from(kv="fp8", seq_len=4096, batch_size=4), "ml.inf2.48xlarge", 8)
    bf16 = plan_row(model, deployment_from(kv="bf16", seq_len=4096, batch_size=4), "ml.inf2.48xlarge", 8)
    # 32 layers x K,V x batch 4 x 1 KV head per rank x 4096 x 128, at 1 and 2 bytes.
    assert fp8.kv_bytes == 32 * 2 * 4 * 1 * 4096 * 128 == 134_217_728
    assert bf16.kv_bytes == 2 * fp8.kv_bytes
    assert fp8.weights == bf16.weights


def test_tied_lm_head_is_materialised_and_kept_bf16() -> None:
    tied = _model(tie_word_embeddings=True)
    assert "lm_head.weight" not in tied.shapes
    result = plan(tied, deployment_from(dtype="int8"))
    assert result.modules_to_not_convert == ("lm_head",)
    row = plan_row(tied, deployment_from(dtype="int8"), "ml.inf2.xlarge", 1)
    untied = plan_row(_model(), deployment_from(dtype="int8", modules_to_not_convert=("lm_head",)), "ml.inf2.xlarge", 1)
    assert row.weights == untied.weights  # the same bytes as an untied model that lists lm_head
    # codes: q 4096 + k 1024 + v 1024 + o 4096 + gate/up/down 3 x 8192; bf16: embedding 6400 + lm_head 6400
    # + norms 192 values; one fp32 scale per output row of each quantized Linear.
    scales = (64 + 16 + 16 + 64 + 128 + 128 + 64) * 4
    assert row.weights.by_kind == {"codes": 34816, "scales": scales, "bf16": 12992 * 2}


def test_tp1_rank_is_the_whole_model_and_config_shapes_match_the_checkpoint(tiny_llama_dir: Path) -> None:
    from_weights = load_model_shape(tiny_llama_dir)
    assert from_weights.from_weights
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert config_shapes(config) == checkpoint_shapes(tiny_llama_dir)
    row = plan_row(from_weights, deployment_from(dtype="int8"), "ml.inf2.xlarge", 1)
    assert row.weights == weight_memory(from_weights.shapes, "int8", ["lm_head"])
    assert row.weights.total_bytes == 209536  # tests/test_neuron/planner/test_weight_memory.py, by hand


def test_llama3_8b_int8_tp2_by_hand() -> None:
    model = load_model_shape(CONFIGS / "llama-3-8b.json")
    assert sum(math.prod(s) for s in model.shapes.values()) == 8_030_261_248
    row = plan_row(model, deployment_from(dtype="int8"), "ml.inf2.xlarge", 2)
    codes = (32 * 218_103_808 + 525_336_576) // 2  # decoder Linears and lm_head, halved
    # scale rows per layer: column-parallel q 2048 + k 512 + v 512 + gate 7168 + up 7168, row-parallel o and down
    # replicated 4096 + 4096; lm_head 64128.
    scales = (32 * (17408 + 8192) + 64128) * 4
    bf16 = (128256 * 2048 + 32 * 2 * 4096 + 4096) * 2  # embedding half, replicated norms
    assert row.weights.by_kind == {"codes": codes, "scales": scales, "bf16": bf16}
    assert row.weights.total_bytes == 4_281_731_584
    assert row.kv_bytes == 32 * 2 * 1 * 4 * 1024 * 128  # fp8, 4 KV heads per rank
    assert row.host_bytes == 2 * row.weights.total_bytes
    assert row.fits


def test_smallest_instance_follows_memory_and_price() -> None:
    llama = load_model_shape(CONFIGS / "llama-3-8b.json")
    int8 = plan(llama, deployment_from(dtype="int8")).smallest
    assert int8 is not None and (int8.instance, int8.tp) == ("ml.inf2.xlarge", 2)
    bf16 = plan(llama, deployment_from(dtype="bf16"))
    tp1, tp2 = (r for r in bf16.rows if r.instance == "ml.inf2.xlarge")
    assert not tp1.fits_hbm  # 16 GB of weights on one core
    assert tp2.fits_hbm and not tp2.fits_host  # 8 GB per core, but 16 GB through 16 GiB of host RAM
    assert bf16.smallest is not None and bf16.smallest.instance == "ml.inf2.8xlarge"
    long = plan(llama, deployment_from(dtype="int8", kv="bf16", seq_len=8192, batch_size=32)).smallest
    assert long is not None and long.instance == "ml.inf2.24xlarge"  # 17 GiB of KV cache at tp 2


def test_every_instance_and_allowed_tp_is_planned() -> None:
    llama = load_model_shape(CONFIGS / "llama-3.1-8b.json")
    rows = plan(llama, deployment_from()).rows
    assert {(r.instance, r.tp) for r in rows if r.instance == "ml.inf2.48xlarge"} == {
        ("ml.inf2.48xlarge", tp) for tp in (1, 2, 4, 8, 16)
    }
    assert [r.price.ec2 for r in rows] == sorted(r.price.ec2 for r in rows)
    text = render_markdown(plan(llama, deployment_from()))
    assert "| ml.trn1.32xlarge | 32 | 1 (replicated) |" in text and "pinned 2026-08-26" in text
    # NEW-8: the host-RAM reserve says what it is for and that it is a judgement
    assert "minus 4 GiB for the OS and vLLM's API-server and engine-core processes" in " ".join(text.split())
    assert "not measured" in text


def test_a_model_too_large_for_any_instance_says_so() -> None:
    huge = load_model_shape(CONFIGS / "llama-3.1-405b.json")
    bf16 = plan(huge, deployment_from(dtype="bf16"))
    assert bf16.smallest is None and not any(r.fits for r in bf16.rows)
    with pytest.raises(NeuronforgeError, match="fits on no inf2 instance") as err:
        require_fits(huge, deployment_from(dtype="bf16"), "ml.inf2.48xlarge", 16)
    assert "would, but" not in err.value.what
    # int8 at tp 32 fits a trn1.32xlarge (12.7 GB per core), which neuronforge does not serve on.
    int8 = plan(huge, deployment_from(dtype="int8"))
    assert int8.smallest is None and int8.smallest_of_family("trn1") is not None
    with pytest.raises(NeuronforgeError, match=r"ml\.trn1\.32xlarge \(tp 32, \$21\.50/h\) would"):
        require_fits(huge, deployment_from(dtype="int8"), "ml.inf2.48xlarge", 16)


def test_neuron_config_refuses_what_will_not_fit_and_names_the_smallest(make_tiny_llama) -> None:
    gqa = make_tiny_llama("long-context", max_position_embeddings=2**20)  # 4 query heads of 16, 2 KV heads
    # tp 1: KV = 2 layers x K,V x batch 64 x 2 heads x 2**20 x 16 x 2 bytes = 16 GiB > 14.4 usable.
    with pytest.raises(NeuronforgeError, match=r"will not fit ml\.inf2\.xlarge at tp 1") as err:
        build_neuron_config_spec(gqa, kv="bf16", seq_len=2**20, batch_size=64, tp_degree=1)
    assert "--tp-degree 2 on ml.inf2.xlarge" in err.value.fix
    assert build_neuron_config_spec(gqa, kv="fp8", seq_len=2**20, batch_size=64, tp_degree=1).tp_degree == 1
    # Batch 128: tp 4 replicates the 2 KV heads, so it holds as much KV per core as tp 2: nothing fits.
    with pytest.raises(NeuronforgeError, match="fits on no inf2 instance"):
        build_neuron_config_spec(gqa, kv="bf16", seq_len=2**20, batch_size=128, tp_degree=2)
    mha = make_tiny_llama("long-context-mha", num_key_value_heads=4, max_position_embeddings=2**20)
    with pytest.raises(NeuronforgeError, match=r"will not fit ml\.inf2\.xlarge at tp 2") as err:
        build_neuron_config_spec(mha, kv="bf16", seq_len=2**20, batch_size=64, tp_degree=2)
    assert "--instance ml.inf2.24xlarge --tp-degree 4" in err.value.fix


def test_a_tp_degree_the_instance_cannot_run_is_refused() -> None:
    llama = load_model_shape(CONFIGS / "llama-3-8b.json")
    with pytest.raises(NeuronforgeError, match=r"tp degree 4 does not suit llama-3-8b on ml\.inf2\.xlarge"):
        plan_row(llama, deployment_from(), "ml.inf2.xlarge", 4)
    with pytest.raises(NeuronforgeError, match=r"use --tp-degree in \[1, 2, 4, 8\]"):
        plan_row(llama, deployment_from(), "ml.inf2.24xlarge", 12)  # 12 cores, but 12 does not divide 32 heads


FAMILY_CONFIGS = [
    "qwen2.5-7b",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-0.6b",
    "llama-3.1-8b",
    "mistral-7b-v0.3",
    "mistral-7b-v0.1",
]


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_config_shapes_of_each_family_are_transformers_own(name: str) -> None:
    """The planner's shapes from config.json alone (Qwen2 q/k/v biases, Qwen3 q/k norms and explicit head_dim, tied
    Qwen3-0.6B) are the parameters transformers builds for the published config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((CONFIGS / f"{name}.json").read_text())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    assert config_shapes(config) == {key: tuple(p.shape) for key, p in model.named_parameters()}


def test_each_family_plans_from_its_published_config() -> None:
    int8 = {
        name: plan(load_model_shape(CONFIGS / f"{name}.json"), deployment_from()).smallest for name in FAMILY_CONFIGS
    }
    assert {name: (row.instance, row.tp) for name, row in int8.items() if row} == {
        "qwen2.5-7b": ("ml.inf2.xlarge", 2),
        "qwen3-8b": ("ml.inf2.xlarge", 2),
        "qwen3-14b": ("ml.inf2.8xlarge", 2),  # 14.5 GiB to load through host RAM > 16 - 4 GiB on inf2.xlarge
        "qwen3-0.6b": ("ml.inf2.xlarge", 2),
        "llama-3.1-8b": ("ml.inf2.xlarge", 2),
        "mistral-7b-v0.3": ("ml.inf2.xlarge", 2),
        "mistral-7b-v0.1": ("ml.inf2.xlarge", 2),
    }


def test_fp8_keeps_qwen2_attention_bf16_in_the_plan() -> None:
    """NxD's fp8 quantizer drops q/k/v biases, so every self_attn block of Qwen2 stays bf16 (hf/families.py)."""
    qwen = load_model_shape(CONFIGS / "qwen2.5-7b.json")
    fp8 = plan_row(qwen, deployment_from(dtype="f8e4m3"), "ml.inf2.xlarge", 2)
    int8 = plan_row(qwen, deployment_from(dtype="int8"), "ml.inf2.xlarge", 2)
    attention = 28 * 4  # q, k, v, o per layer
    assert int8.weights.bf16_linears == 0 and fp8.weights.bf16_linears == attention
    # One rank, one layer: q 1792 + k 256 + v 256 rows of 3584, o 3584 x 1792 -> W = 3584 x 4096 weights. int8:
    # W code bytes + fp32 scales of the 2304 q/k/v rows and of o's 3584 rows (replicated); bf16: 2W. Biases: bf16 both.
    weights, scales = 3584 * 4096, 4 * (2304 + 3584)
    assert fp8.weights.total_bytes - int8.weights.total_bytes == 28 * (2 * weights - (weights + scales))


def test_sliding_window_sizes_the_kv_cache_as_nxdi_does() -> None:
    """NEW-7: NxDI's cache is sliding_window long whenever the class reads one (kv_cache_manager.py:198-203), even
    when the window is longer than seq_len; Qwen's classes ignore the config's sliding_window (model_base.py:111)."""
    v01 = load_model_shape(CONFIGS / "mistral-7b-v0.1.json")
    v03 = load_model_shape(CONFIGS / "mistral-7b-v0.3.json")
    window = plan_row(v01, deployment_from(seq_len=1024), "ml.inf2.xlarge", 2)
    full = plan_row(v03, deployment_from(seq_len=1024), "ml.inf2.xlarge", 2)
    assert window.kv_bytes == 32 * 2 * 1 * 4 * 4096 * 128  # fp8, 4 KV heads per rank, 4096 positions
    assert full.kv_bytes == 32 * 2 * 1 * 4 * 1024 * 128 == window.kv_bytes // 4
    assert plan_row(v01, deployment_from(seq_len=8192), "ml.inf2.xlarge", 2).kv_bytes == window.kv_bytes
    qwen = load_model_shape(CONFIGS / "qwen2.5-7b.json")  # sliding_window 131072, use_sliding_window false
    assert plan_row(qwen, deployment_from(seq_len=1024), "ml.inf2.xlarge", 2).kv_bytes == 28 * 2 * 2 * 1024 * 128


def test_mistral_nemo_is_refused_before_planning() -> None:
    """NEW-2: NxDI's Mistral class sizes heads as 5120 // 32 = 160, NeMo's weights have head_dim 128."""
    with pytest.raises(NeuronforgeError, match=r"head_dim 128.*hidden_size // num_attention_heads = 160"):
        load_model_shape(CONFIGS / "mistral-nemo-12b.json")


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "gemma", "phi3"])
def test_other_families_are_refused_with_the_supported_list(model_type: str) -> None:
    config = {**json.loads((CONFIGS / "llama-3.1-8b.json").read_text()), "model_type": model_type}
    with pytest.raises(NeuronforgeError, match=rf"'{model_type}' model is not supported.*qwen2.*qwen3"):
        ModelShape.from_config(config, model_type)
