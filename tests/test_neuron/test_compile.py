"""The compile step's call sequence against the in-repo NxDI stand-in, and its fail-fast without NxDI."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.compile import FP8_ENV, QUANTIZED_DIR, RECORD_FILE, CompileOptions, compile_model
from neuronforge.neuron.config import build_neuron_config_spec, write_config_files
from neuronforge.neuron.versions import neuron_sdk

STANDIN = Path(__file__).resolve().parents[1] / "nxdi_standin"
EXPECTED_ORDER = [
    "NeuronConfig",
    "load_pretrained_config",
    "InferenceConfig",
    "save_quantized_state_dict",
    "NeuronLlamaForCausalLM",
    "compile",
    "load",
    "HuggingFaceGenerationAdapter",
    "generate",
]


def _drop_standin_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("neuronx_distributed", "neuronx_distributed_inference")]:
        del sys.modules[name]


@pytest.fixture()
def nxdi(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in NxDI on sys.path for this test only; yields its package (CALLS records every call)."""
    _drop_standin_modules()
    monkeypatch.syspath_prepend(str(STANDIN))
    import neuronx_distributed_inference

    neuronx_distributed_inference.CALLS.clear()
    yield neuronx_distributed_inference
    _drop_standin_modules()


def calls(nxdi: ModuleType, name: str) -> list[dict[str, Any]]:
    return [details for call, details in nxdi.CALLS if call == name]


def test_missing_nxdi_fails_fast_with_install_hint(tiny_llama_dir: Path, tmp_path: Path) -> None:
    _drop_standin_modules()
    with pytest.raises(NeuronforgeError) as info:
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "compiled"))
    assert "NxD Inference is not installed" in info.value.what
    assert neuron_sdk("2.28").pip_install_command() in (info.value.fix or "")
    assert not (tmp_path / "compiled").exists()

    with pytest.raises(NeuronforgeError) as info:
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "compiled", sdk="2.31"))
    assert '"neuronx-distributed-inference==0.10.18399"' in (info.value.fix or "")


def test_cli_compile_without_nxdi_exits_cleanly(tiny_llama_dir: Path, tmp_path: Path) -> None:
    _drop_standin_modules()
    result = CliRunner().invoke(app, ["compile", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "pip install --extra-index-url https://pip.repos.neuron.amazonaws.com" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_fp8_call_sequence_env_and_config(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from neuronx_distributed.quantization.quantization_config import KVQuantizationConfig, QuantizationType

    out = tmp_path / "compiled"
    assert not set(FP8_ENV) & os.environ.keys()
    compile_model(
        CompileOptions(model=str(tiny_llama_dir), out=out, dtype="f8e4m3", kv="fp8", seq_len=128, smoke_tokens=5)
    )

    assert [name for name, _ in nxdi.CALLS] == EXPECTED_ORDER
    for name in ("save_quantized_state_dict", "compile", "load", "generate"):
        assert calls(nxdi, name)[0]["env"] == {**FP8_ENV, "NEURON_PLATFORM_TARGET_OVERRIDE": "inf2"}, name
    assert not set(FP8_ENV) & os.environ.keys(), "the fp8 variables are scoped to the compile"

    save = calls(nxdi, "save_quantized_state_dict")[0]
    assert save["target_is_dir"] and save["model_path"] == str(tiny_llama_dir)
    assert calls(nxdi, "load")[0]["compiled"]

    kwargs = calls(nxdi, "NeuronConfig")[0]["kwargs"]
    expected = build_neuron_config_spec(tiny_llama_dir, dtype="f8e4m3", kv="fp8", seq_len=128).neuron_config_kwargs()
    kv = kwargs.pop("kv_quant_config")
    assert isinstance(kv, KVQuantizationConfig)
    assert kv.k_quant_method is kv.v_quant_method is QuantizationType.PER_TENSOR_SYMMETRIC
    assert kv.quant_dtype is torch.float8_e4m3fn and kv.direct_cast is True
    assert kwargs.pop("save_sharded_checkpoint") is True
    assert Path(kwargs.pop("quantized_checkpoints_path")).name == QUANTIZED_DIR
    expected.pop("kv_quant_config"), expected.pop("quantized_checkpoints_path")
    assert kwargs == expected
    assert kwargs["modules_to_not_convert"] == ["lm_head"] and kwargs["kv_cache_quant"] is True

    config = calls(nxdi, "NeuronLlamaForCausalLM")[0]["config"]
    assert type(config).__name__ == "LlamaInferenceConfig" and config.num_hidden_layers == 2  # HF config loaded

    assert (out / "model.pt").is_file() and (out / QUANTIZED_DIR / "model.safetensors").is_file()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".compiled.partial-*"))
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["spec"]["quantized_checkpoints_path"] == str(out.resolve() / QUANTIZED_DIR)
    assert record["env"]["UNSAFE_FP8FNCAST"] == "1" and record["smoke"]["completion"]
    assert set(record["timings"]) == {"quantize_s", "compile_s", "load_s", "smoke_s"}
    assert calls(nxdi, "generate")[0]["max_new_tokens"] == 5


def test_int8_with_bf16_kv_sets_no_fp8_flags(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", dtype="int8", kv="bf16", seq_len=128))
    kwargs = calls(nxdi, "NeuronConfig")[0]["kwargs"]
    assert kwargs["kv_cache_quant"] is False and "kv_quant_config" not in kwargs
    assert kwargs["quantization_dtype"] == "int8"
    for _, details in nxdi.CALLS:
        assert details["env"]["XLA_HANDLE_SPECIAL_SCALAR"] is None and details["env"]["UNSAFE_FP8FNCAST"] is None


def test_reads_stage1_not_convert_file(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "stage1"
    shutil.copytree(tiny_llama_dir, model)
    (model / "modules_to_not_convert.json").write_text(json.dumps({"modules_to_not_convert": ["layers.1.mlp"]}))
    compile_model(CompileOptions(model=str(model), out=tmp_path / "c", seq_len=128))
    assert calls(nxdi, "NeuronConfig")[0]["kwargs"]["modules_to_not_convert"] == ["layers.1.mlp", "lm_head"]


def test_neuron_config_file_drives_the_compile(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = build_neuron_config_spec(
        tiny_llama_dir,
        dtype="f8e5m2",
        kv="bf16",
        tp_degree=1,
        seq_len=64,
        modules_to_not_convert=["layers.0.self_attn"],
    )
    config_path, _ = write_config_files(spec, tmp_path / "cfg")
    compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", neuron_config=config_path))
    kwargs = calls(nxdi, "NeuronConfig")[0]["kwargs"]
    assert (kwargs["quantization_dtype"], kwargs["tp_degree"], kwargs["seq_len"]) == ("f8e5m2", 1, 64)
    assert kwargs["modules_to_not_convert"] == ["layers.0.self_attn", "lm_head"]
    assert calls(nxdi, "compile")[0]["env"]["UNSAFE_FP8FNCAST"] is None  # e5m2 weights, bf16 KV: no e4m3 cast


def test_bad_config_stops_before_any_nxdi_work(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="f8e4m3"):
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", dtype="f8e4m3fn"))
    with pytest.raises(NeuronforgeError, match="NeuronCores"):
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", tp=4))
    assert nxdi.CALLS == [] and not (tmp_path / "c").exists()


def test_failed_compile_leaves_no_output(
    nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuronx_distributed_inference.models.llama.modeling_llama import NeuronLlamaForCausalLM

    def broken(self: Any, path: str) -> None:
        raise RuntimeError("neuronx-cc failed")

    monkeypatch.setattr(NeuronLlamaForCausalLM, "compile", broken)
    with pytest.raises(RuntimeError, match="neuronx-cc"):
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", seq_len=128))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.partial-*"))
    assert not set(FP8_ENV) & os.environ.keys()


def test_existing_output_needs_overwrite(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    with pytest.raises(NeuronforgeError, match="already exists"):
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c"))
    assert nxdi.CALLS == []
    compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", seq_len=128, overwrite=True))
    assert (tmp_path / "c" / "model.pt").is_file()


def test_cli_compile_with_standin(nxdi: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "compile",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "c"),
            "--dtype",
            "f8e4m3",
            "--tp-degree",
            "1",
            "--kv",
            "fp8",
            "--seq-len",
            "128",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "notice:" in result.output and "added 'lm_head'" in result.output and "compiled:" in result.output
    assert calls(nxdi, "NeuronConfig")[0]["kwargs"]["tp_degree"] == 1
