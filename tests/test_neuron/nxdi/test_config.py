"""NeuronConfig validation rules, the files they are written to, and the pinned SDK versions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.config import (
    KVQuantSpec,
    NeuronConfigSpec,
    build_neuron_config_spec,
    check_against_model,
    default_not_convert,
    kv_fields,
    make_spec,
    read_neuron_config,
    write_config_files,
)
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, SDKS, install_hint, neuron_sdk
from neuronforge.neuron.planner.model_facts import ModelFacts, choose_tp

NEURON_STACK = Path(__file__).resolve().parents[3] / "docs" / "neuron-stack.md"


def facts(**overrides: Any) -> ModelFacts:
    config = dict(
        model_type="llama",
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    )
    config.update(overrides)
    return ModelFacts.from_config(config)


def spec(**overrides: Any) -> NeuronConfigSpec:
    fields: dict[str, Any] = dict(
        tp_degree=2, seq_len=512, n_positions=512, quantized_checkpoints_path="q", target_instance="ml.inf2.xlarge"
    )
    fields.update(overrides)
    return make_spec(**fields)


def refused(match: str, fn: Any, *args: Any, **kwargs: Any) -> NeuronforgeError:
    with pytest.raises(NeuronforgeError) as info:
        fn(*args, **kwargs)
    assert re.search(match, f"{info.value.what}\n{info.value.fix}", re.S), info.value
    assert info.value.fix, "every refusal says what to do"
    return info.value


# --- field rules -----------------------------------------------------------------------------------------------


def test_dtype_spellings() -> None:
    for dtype in ("int8", "f8e4m3"):
        assert spec(quantization_dtype=dtype).quantization_dtype == dtype
    err = refused(r"spell it 'f8e4m3'", spec, quantization_dtype="f8e4m3fn")
    assert "f8e4m3fn" in err.what
    refused(r"quantization_dtype", spec, quantization_dtype="int4")


def test_quantization_type_values() -> None:
    assert spec(quantization_type="per_tensor_symmetric").quantization_type == "per_tensor_symmetric"
    refused(r"quantization_type", spec, quantization_type="blockwise_symmetric")


def test_refuses_what_nxdi_cannot_shard_or_serve() -> None:
    """B3: fp8 per-tensor scales are 0-dim and break NxDI's GQA sharding; R3: e5m2 codes are upcast before sharding."""
    refused(
        r"Cannot get channel axis.*gqa\.py", spec, quantization_dtype="f8e4m3", quantization_type="per_tensor_symmetric"
    )
    refused(r"f8e5m2 weights are not supported.*application_base\.py:643-656", spec, quantization_dtype="f8e5m2")
    assert spec(quantization_dtype="int8", quantization_type="per_tensor_symmetric")


def test_mistral_needs_an_sdk_whose_vllm_serves_it() -> None:
    """R2: vLLM on NxDI 0.8 has no Mistral class; compiling it there would give an endpoint that cannot start."""
    mistral = facts(model_type="mistral")
    refused(r"SDK 2\.28 cannot serve model_type 'mistral'.*--sdk 2\.31", check_against_model, spec(), mistral)
    assert check_against_model(spec(sdk="2.31"), mistral).sdk == "2.31"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("layers.1", r"bare layer prefix.*layers\.10"),
        ("model.layers.0.mlp", r"HF module name.*'layers\.0\.mlp'"),
        ("model.layers.3.self_attn.q_proj", r"HF module name.*'layers\.3\.self_attn'"),
        ("layers.0.self_attn.q_proj", r"single projection.*'layers\.0\.self_attn'.*qkv_proj"),
        ("layers.2.mlp.down_proj", r"single projection.*'layers\.2\.mlp'"),
        ("embed_tokens", r"not one NxDI matches safely"),
        ("layers.0.self_attn ", r"not one NxDI matches safely"),
    ],
)
def test_unsafe_entries_are_refused(entry: str, message: str) -> None:
    refused(message, spec, modules_to_not_convert=["lm_head", entry])


def test_canonical_entries_pass_and_duplicates_do_not() -> None:
    entries = ["lm_head", "layers.0.self_attn", "layers.15.mlp"]
    assert spec(modules_to_not_convert=entries).modules_to_not_convert == entries
    refused(r"\['layers\.0\.mlp'\] more than once", spec, modules_to_not_convert=["layers.0.mlp", "layers.0.mlp"])


def test_kv_cache_needs_both_flags() -> None:
    fp8, bf16 = kv_fields("fp8"), kv_fields("bf16")
    assert fp8 == {"kv_cache_quant": True, "kv_quant_config": KVQuantSpec()}
    assert bf16 == {"kv_cache_quant": False, "kv_quant_config": None}
    assert spec(**fp8).neuron_config_kwargs()["kv_quant_config"] == {
        "k_quant_method": "per_tensor_symmetric",
        "v_quant_method": "per_tensor_symmetric",
        "quant_dtype": "float8_e4m3fn",
        "direct_cast": True,
    }
    refused(r"set both", spec, kv_cache_quant=True, kv_quant_config=None)
    refused(r"set both", spec, kv_cache_quant=False, kv_quant_config=KVQuantSpec())
    refused(r"--kv fp8 or --kv bf16", kv_fields, "int8")
    refused(r"kv_quant_config", spec, kv_quant_config={"direct_cast": False})


def test_instances_and_sdk() -> None:
    assert spec(target_instance="inf2.48xlarge").target_instance == "ml.inf2.48xlarge"
    refused(r"not a known Neuron instance type.*ml\.inf2\.xlarge", spec, target_instance="ml.g5.xlarge")
    refused(r"2\.28", spec, sdk="2.19")
    cores = {
        name: choose_tp(facts(num_attention_heads=96, num_key_value_heads=1), name)
        for name in (
            "ml.inf2.xlarge",
            "ml.inf2.8xlarge",
            "ml.inf2.24xlarge",
            "ml.inf2.48xlarge",
            "ml.trn1.2xlarge",
            "ml.trn1.32xlarge",
        )
    }
    assert cores == {
        "ml.inf2.xlarge": 2,
        "ml.inf2.8xlarge": 2,
        "ml.inf2.24xlarge": 12,
        "ml.inf2.48xlarge": 24,
        "ml.trn1.2xlarge": 2,
        "ml.trn1.32xlarge": 32,
    }  # research/sagemaker.md section 3.1


def test_kwargs_exclude_our_own_fields() -> None:
    kwargs = spec().neuron_config_kwargs()
    assert not {"target_instance", "sdk", "notices"} & kwargs.keys()
    assert kwargs["quantized"] is True and kwargs["torch_dtype"] == "bfloat16"


# --- model-dependent rules -------------------------------------------------------------------------------------


def test_layer_index_must_exist() -> None:
    refused(
        r"layer 16.*16 layers \(0-15\)", check_against_model, spec(modules_to_not_convert=["layers.16.mlp"]), facts()
    )
    assert check_against_model(spec(modules_to_not_convert=["layers.15.mlp"]), facts()).modules_to_not_convert == [
        "layers.15.mlp"
    ]


def test_tied_model_gets_lm_head_with_notice() -> None:
    checked = check_against_model(spec(modules_to_not_convert=["layers.0.mlp"]), facts(tie_word_embeddings=True))
    assert checked.modules_to_not_convert == ["layers.0.mlp", "lm_head"]
    assert any("added 'lm_head'" in n for n in checked.notices)
    untied = check_against_model(spec(modules_to_not_convert=["layers.0.mlp"]), facts())
    assert untied.modules_to_not_convert == ["layers.0.mlp"] and untied.notices == []
    already = check_against_model(spec(modules_to_not_convert=["lm_head"]), facts(tie_word_embeddings=True))
    assert already.modules_to_not_convert == ["lm_head"] and already.notices == []


def test_per_tensor_refuses_a_skip_list() -> None:
    refused(
        r"per_channel_symmetric",
        check_against_model,
        spec(quantization_type="per_tensor_symmetric", modules_to_not_convert=["layers.0.mlp"]),
        facts(),
    )
    refused(
        r"tied-embedding",
        check_against_model,
        spec(quantization_type="per_tensor_symmetric"),
        facts(tie_word_embeddings=True),
    )
    ok = check_against_model(spec(quantization_type="per_tensor_symmetric"), facts())
    assert ok.modules_to_not_convert == []


def test_fp8_keeps_every_biased_block_bf16_and_says_so() -> None:
    """NxD's fp8 quantizer drops Linear biases (hf/families.py), so fp8 keeps the biased blocks bf16 on its own."""
    biased = facts(num_hidden_layers=2, attention_bias=True)
    both = ["layers.0.self_attn", "layers.1.self_attn"]
    done = check_against_model(spec(quantization_dtype="f8e4m3"), biased)
    assert done.modules_to_not_convert == both
    assert any("drops Linear biases" in notice and "layers.0.self_attn" in notice for notice in done.notices)
    partly = check_against_model(
        spec(quantization_dtype="f8e4m3", modules_to_not_convert=["layers.1.self_attn"]), biased
    )
    assert partly.modules_to_not_convert == ["layers.1.self_attn", "layers.0.self_attn"]
    assert (
        check_against_model(spec(quantization_dtype="int8"), biased).modules_to_not_convert == []
    )  # int8 keeps biases
    mlp = check_against_model(spec(quantization_dtype="f8e4m3"), facts(num_hidden_layers=1, mlp_bias=True))
    assert mlp.modules_to_not_convert == ["layers.0.mlp"]
    # Qwen2's q/k/v biases exist whatever the config says (modeling_qwen2.py:59-62): no attention_bias key.
    qwen2 = facts(model_type="qwen2", num_hidden_layers=2)
    assert qwen2.attention_bias
    assert check_against_model(spec(quantization_dtype="f8e4m3"), qwen2).modules_to_not_convert == both
    assert (
        check_against_model(spec(quantization_dtype="f8e4m3"), facts(model_type="qwen3")).modules_to_not_convert == []
    )


def test_tp_must_fit_the_instance_and_divide_the_heads() -> None:
    err = refused(r"needs 4 NeuronCores; ml\.inf2\.xlarge has 2", check_against_model, spec(tp_degree=4), facts())
    assert "ml.inf2.24xlarge" in err.fix and "ml.inf2.8xlarge" not in err.fix
    refused(
        r"does not divide num_attention_heads=9.*\[1, 3, 9\]",
        check_against_model,
        spec(tp_degree=2, target_instance="ml.inf2.24xlarge"),
        facts(num_attention_heads=9, num_key_value_heads=3),
    )
    for tp in (1, 2, 8):  # 8 KV heads split evenly (tp 1, 2, 8) or are replicated (tp 16): GQA kept
        assert check_against_model(spec(tp_degree=tp, target_instance="ml.trn1.32xlarge"), facts()).notices == []
    assert check_against_model(spec(tp_degree=16, target_instance="ml.trn1.32xlarge"), facts()).notices == []
    mha = check_against_model(spec(tp_degree=12, target_instance="ml.inf2.24xlarge"), facts(num_attention_heads=24))
    assert any("converts GQA to MHA" in n and "3x" in n for n in mha.notices)


def test_choose_tp_prefers_gqa_preserving_degrees() -> None:
    assert choose_tp(facts(), "ml.inf2.48xlarge") == 16  # divides 32 heads, multiple of 8 KV heads, <= 24 cores
    assert choose_tp(facts(), "inf2.xlarge") == 2
    # 24 heads / 8 KV heads on 12 cores: 12 and 6 would convert to MHA, so 8 wins
    assert choose_tp(facts(num_attention_heads=24), "ml.inf2.24xlarge") == 8
    assert choose_tp(facts(num_attention_heads=9, num_key_value_heads=3), "ml.inf2.xlarge") == 1


def test_sequence_lengths() -> None:
    """R7: NxDI overwrites n_positions with the bucket (= seq_len), so only seq_len means anything."""
    refused(r"n_positions 8192 differs from seq_len 512.*model_wrapper\.py", spec, seq_len=512, n_positions=8192)
    refused(r"seq_len 8192 exceeds the model's max_position_embeddings 4096", check_against_model,
            spec(seq_len=8192, n_positions=8192), facts())  # fmt: skip


# --- builder, files, CLI ---------------------------------------------------------------------------------------


def test_builder_on_tiny_model_writes_both_files(tiny_llama_dir: Path, tmp_path: Path) -> None:
    built = build_neuron_config_spec(
        tiny_llama_dir, dtype="f8e4m3", modules_to_not_convert=["layers.1.mlp"], seq_len=128
    )
    assert built.tp_degree == 2 and built.modules_to_not_convert == ["layers.1.mlp", "lm_head"]
    assert len(built.notices) == 2  # tp chosen, lm_head added
    config_path, not_convert_path = write_config_files(built, tmp_path / "cfg")
    assert json.loads(not_convert_path.read_text()) == {"modules_to_not_convert": ["layers.1.mlp", "lm_head"]}
    on_disk = json.loads(config_path.read_text())
    assert on_disk["quantization_dtype"] == "f8e4m3" and on_disk["kv_quant_config"]["direct_cast"] is True
    assert "notices" not in on_disk
    assert read_neuron_config(config_path) == built.model_copy(update={"notices": []})
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["modules_to_not_convert.json", "neuron_config.json"]
    refused(r"tp_degree 4 needs 4", build_neuron_config_spec, tiny_llama_dir, tp_degree=4)
    refused(r"does not exist", build_neuron_config_spec, tmp_path / "nope")


def test_default_not_convert(tmp_path: Path, tiny_llama_dir: Path) -> None:
    (tmp_path / "bare.json").write_text(json.dumps(["lm_head"]))
    assert default_not_convert(tiny_llama_dir, None) == []
    assert default_not_convert(tiny_llama_dir, tmp_path / "bare.json") == ["lm_head"]
    refused(r"does not exist", default_not_convert, tiny_llama_dir, tmp_path / "missing.json")


def test_cli_writes_files_and_reports_notices(tiny_llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "skip.json").write_text(json.dumps({"modules_to_not_convert": ["layers.0.self_attn"]}))
    result = CliRunner().invoke(
        app,
        [
            "neuron-config",
            "--model",
            str(tiny_llama_dir),
            "--dtype",
            "int8",
            "--not-convert",
            str(tmp_path / "skip.json"),
            "--tp-degree",
            "2",
            "--instance",
            "ml.inf2.xlarge",
            "--seq-len",
            "128",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "added 'lm_head'" in result.output
    written = json.loads((tmp_path / "o" / "modules_to_not_convert.json").read_text())
    assert written == {"modules_to_not_convert": ["layers.0.self_attn", "lm_head"]}


def test_cli_bad_input_is_a_clean_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "skip.json").write_text(json.dumps(["layers.0.self_attn.q_proj"]))
    result = CliRunner().invoke(
        app,
        [
            "neuron-config",
            "--model",
            str(tiny_llama_dir),
            "--not-convert",
            str(tmp_path / "skip.json"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "fix:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(
        app, ["neuron-config", "--model", str(tiny_llama_dir), "--dtype", "f8e4m3fn", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "f8e4m3" in result.output


@pytest.mark.slow
def test_real_smollm2_config(smollm2_dir: Path) -> None:
    """SmolLM2: 9 heads / 3 KV heads and tied embeddings, so tp=1 on inf2.xlarge and lm_head stays bf16."""
    built = build_neuron_config_spec(smollm2_dir, dtype="int8", seq_len=2048)
    assert built.tp_degree == 1 and built.modules_to_not_convert == ["lm_head"]
    refused(r"does not divide num_attention_heads=9", build_neuron_config_spec, smollm2_dir, tp_degree=2)
    refused(r"layer 30.*30 layers", build_neuron_config_spec, smollm2_dir, modules_to_not_convert=["layers.30.mlp"])


# --- versions --------------------------------------------------------------------------------------------------


def test_sdk_pins_and_install_hint() -> None:
    assert DEFAULT_SDK == "2.28" and set(SDKS) == {"2.28", "2.31"}
    default = neuron_sdk()
    assert default.nxdi == "0.8.16251"
    command = default.pip_install_command()
    assert '"neuronx-distributed-inference==0.8.16251"' in command
    assert "--extra-index-url https://pip.repos.neuron.amazonaws.com" in command
    assert default.torch_neuronx is None and " torch-neuronx" in command  # unknown pin: left to the resolver
    assert command in install_hint()
    assert '"torch-neuronx==2.9.0.2.15.32035"' in neuron_sdk("2.31").pip_install_command()
    refused(r"2\.28, 2\.31", neuron_sdk, "2.29")


def test_install_page_uses_the_pins() -> None:
    text = NEURON_STACK.read_text()
    section = text.split("## Installing the Neuron packages", 1)[1].split("\n## ", 1)[0]
    for version in SDKS.values():
        assert version.pip_install_command() in section


def test_batch_above_one_compiles_continuous_batching_as_vllm_neuron_does(tiny_llama_dir: Path) -> None:
    """NEW-3: vllm-neuron puts each request in its own KV slot and prefills it alone (ctx_batch_size 1)."""
    single = {"ctx_batch_size": 1, "tkg_batch_size": 1, "is_continuous_batching": False}
    assert spec().neuron_config_kwargs().items() >= single.items()
    built = build_neuron_config_spec(tiny_llama_dir, batch_size=4, seq_len=128)
    kwargs = built.neuron_config_kwargs()
    assert {k: kwargs[k] for k in ("batch_size", "ctx_batch_size", "tkg_batch_size", "is_continuous_batching")} == {
        "batch_size": 4, "ctx_batch_size": 1, "tkg_batch_size": 4, "is_continuous_batching": True
    }  # fmt: skip
    refused("continuous batching|KV-cache slot", spec, batch_size=4, ctx_batch_size=4, is_continuous_batching=False)
    refused("KV-cache slot", spec, batch_size=4, is_continuous_batching=False)


def test_batch_settings_survive_the_neuron_config_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    built = build_neuron_config_spec(tiny_llama_dir, batch_size=3, seq_len=128)
    config_path, _ = write_config_files(built, tmp_path)
    assert read_neuron_config(config_path).model_dump() == built.model_dump()
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "ctx_batch_size": 3}))  # static batching, as before NEW-3
    refused("KV-cache slot", read_neuron_config, config_path)


def test_default_sdk_serves_every_family_and_an_unservable_choice_is_refused(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """NEW-4: with defaults, Llama targets 2.28 (documented for Inf2) and Mistral 2.31 (2.28's vLLM has no Mistral);
    `run` checks this before any work (check_servable), naming the SDK that serves it."""
    from neuronforge.neuron.nxdi.config import check_servable

    mistral = tmp_path / "mistral"
    shutil.copytree(tiny_llama_dir, mistral)
    config = json.loads((mistral / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    (mistral / "config.json").write_text(json.dumps(config))
    assert build_neuron_config_spec(tiny_llama_dir, seq_len=128).sdk == DEFAULT_SDK == "2.28"
    chosen = build_neuron_config_spec(mistral, seq_len=128)
    assert chosen.sdk == "2.31" and any("Neuron SDK 2.31 chosen" in notice for notice in chosen.notices)
    check_servable(mistral, None)
    check_servable(tiny_llama_dir, "2.31")
    assert (
        refused("SDK 2.28 cannot serve model_type 'mistral'", check_servable, mistral, "2.28").fix == "use --sdk 2.31"
    )
