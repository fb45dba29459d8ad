"""The compile step against the in-repo NxDI stand-in (tests/nxdi_standin, which copies NxDI's config round trip,
NxD's KV assert and GQA scale checks), and its fail-fast paths without NxDI or without a Neuron device."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import neuronforge.neuron.nxdi.compile as compile_module
from neuronforge.cli import app
from neuronforge.core.outputs import OUTPUT_MARKER
from neuronforge.errors import NeuronforgeError, validated
from neuronforge.neuron.host import DEV_ROOT_ENV
from neuronforge.neuron.nxdi.compile import FP8_ENV, QUANTIZED_DIR, RECORD_FILE, CompileOptions, compile_model
from neuronforge.neuron.nxdi.config import build_neuron_config_spec, write_config_files
from neuronforge.neuron.nxdi.versions import neuron_sdk

STANDIN = Path(__file__).resolve().parents[2] / "nxdi_standin"
EXPECTED_ORDER = [
    "NeuronConfig",
    "load_pretrained_config",
    "InferenceConfig",
    "save_quantized_state_dict",
    "NeuronLlamaForCausalLM",
    "compile",
    "NeuronConfig",  # make_loadable re-reads neuron_config.json with NxDI's loader
    "InferenceConfig",
    "load",
    "HuggingFaceGenerationAdapter",
    "generate",
]
GIB = 2**30


def _drop_standin_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("neuronx_distributed", "neuronx_distributed_inference")]:
        del sys.modules[name]


@pytest.fixture()
def model_dir(stage1_llama_dir: Path) -> Path:
    return stage1_llama_dir


@pytest.fixture()
def set_host(nxdi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Pretend this host has `devices` Neuron devices (2 NeuronCores each) and `ram_gib` of RAM."""

    def set_to(devices: int, ram_gib: float = 64) -> None:
        dev = tmp_path / f"dev{devices}"
        dev.mkdir(exist_ok=True)
        for i in range(devices):
            (dev / f"neuron{i}").touch()
        monkeypatch.setenv(DEV_ROOT_ENV, str(dev))  # read by neuronforge's host check and the stand-in's load()
        monkeypatch.setattr(compile_module, "host_memory_bytes", lambda: int(ram_gib * GIB))

    return set_to


@pytest.fixture()
def nxdi(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in NxDI on sys.path for this test only; yields its package (CALLS records every call)."""
    _drop_standin_modules()
    monkeypatch.syspath_prepend(str(STANDIN))
    import neuronx_distributed_inference

    neuronx_distributed_inference.CALLS.clear()
    yield neuronx_distributed_inference
    _drop_standin_modules()


@pytest.fixture()
def inf2(nxdi: ModuleType, set_host: Callable[..., None]) -> ModuleType:
    """The stand-in on an inf2.xlarge-like host: one device, 2 NeuronCores, 64 GiB of RAM."""
    set_host(1)
    return nxdi


def calls(nxdi: ModuleType, name: str) -> list[dict[str, Any]]:
    return [details for call, details in nxdi.CALLS if call == name]


def test_missing_nxdi_fails_fast_with_install_hint(model_dir: Path, tmp_path: Path) -> None:
    _drop_standin_modules()
    with pytest.raises(NeuronforgeError) as info:
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "compiled", seq_len=128))
    assert "NxD Inference is not installed" in info.value.what
    assert neuron_sdk("2.28").pip_install_command() in (info.value.fix or "")
    assert not (tmp_path / "compiled").exists()

    with pytest.raises(NeuronforgeError) as info:
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "compiled", seq_len=128, sdk="2.31"))
    assert '"neuronx-distributed-inference==0.10.18399"' in (info.value.fix or "")


def test_cli_compile_without_nxdi_exits_cleanly(model_dir: Path, tmp_path: Path) -> None:
    _drop_standin_modules()
    result = CliRunner().invoke(
        app, ["compile", "--model", str(model_dir), "--out", str(tmp_path / "c"), "--seq-len", "128"]
    )
    assert result.exit_code == 2
    assert "pip install --extra-index-url https://pip.repos.neuron.amazonaws.com" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_fp8_call_sequence_env_and_config(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    from neuronx_distributed.quantization.quantization_config import KVQuantizationConfig, QuantizationType

    out = tmp_path / "compiled"
    assert not set(FP8_ENV) & os.environ.keys()
    compile_model(CompileOptions(model=str(model_dir), out=out, dtype="f8e4m3", kv="fp8", seq_len=128, smoke_tokens=5))

    assert [name for name, _ in inf2.CALLS] == EXPECTED_ORDER
    for name in ("save_quantized_state_dict", "compile", "load", "generate"):
        # "trn1" for an inf2 target: both are NeuronCore-v2, and NxD/NxDI only recognise "trn1" (compile.py)
        assert calls(inf2, name)[0]["env"] == {**FP8_ENV, "NEURON_PLATFORM_TARGET_OVERRIDE": "trn1"}, name
    assert not set(FP8_ENV) & os.environ.keys(), "the fp8 variables are scoped to the compile"

    save = calls(inf2, "save_quantized_state_dict")[0]
    assert save["target_is_dir"] and save["model_path"] == str(model_dir)
    assert save["hf_dtype"] == torch.float32  # NxDI quantizes the HF model loaded in fp32 (host RAM, R4)
    assert calls(inf2, "load")[0]["compiled"]

    kwargs = calls(inf2, "NeuronConfig")[0]["kwargs"]
    expected = build_neuron_config_spec(model_dir, dtype="f8e4m3", kv="fp8", seq_len=128).neuron_config_kwargs()
    kv = kwargs.pop("kv_quant_config")
    assert isinstance(kv, KVQuantizationConfig)
    assert kv.k_quant_method is kv.v_quant_method is QuantizationType.PER_TENSOR_SYMMETRIC
    assert kv.quant_dtype is torch.float8_e4m3fn and kv.direct_cast is True
    assert kwargs.pop("save_sharded_checkpoint") is True
    assert Path(kwargs.pop("quantized_checkpoints_path")).name == QUANTIZED_DIR
    expected.pop("kv_quant_config"), expected.pop("quantized_checkpoints_path")
    assert kwargs == expected
    assert kwargs["modules_to_not_convert"] == ["lm_head"] and kwargs["kv_cache_quant"] is True

    config = calls(inf2, "NeuronLlamaForCausalLM")[0]["config"]
    assert type(config).__name__ == "LlamaInferenceConfig" and config.num_hidden_layers == 2  # HF config loaded
    assert config.rope_theta == 10000.0  # read through the stand-in's transformers-4.57 defaults

    assert (out / "model.pt").is_file() and not (out / QUANTIZED_DIR).exists()  # R6: only presharding reads it
    assert (out / "weights" / "tp0_sharded_checkpoint.safetensors").is_file()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".compiled.partial-*"))
    record = json.loads((out / RECORD_FILE).read_text())
    quantized = Path(record["spec"]["quantized_checkpoints_path"])
    assert quantized.name == QUANTIZED_DIR and not quantized.parent.exists()  # written in $TMPDIR, then deleted
    assert record["env"]["UNSAFE_FP8FNCAST"] == "1" and record["smoke"]["completion"]
    assert record["compile_only"] is False
    assert set(record["timings"]) == {"quantize_s", "compile_s", "load_s", "smoke_s"}
    assert calls(inf2, "generate")[0]["max_new_tokens"] == 5


def test_fp8_kv_model_reloads_the_way_vllm_neuron_loads_it(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    """B1: compile -> NeuronLlamaForCausalLM(compiled_path) (vllm-neuron loader:216) -> the same KV settings."""
    from neuronx_distributed.quantization.quantization_config import QuantizationType
    from neuronx_distributed_inference.models.llama.modeling_llama import NeuronLlamaForCausalLM

    out = tmp_path / "compiled"
    compile_model(CompileOptions(model=str(model_dir), out=out, dtype="int8", kv="fp8", seq_len=128))
    written = json.loads((out / "neuron_config.json").read_text())["neuron_config"]
    assert written["kv_quant_config"] == {"direct_cast": True}
    kv = NeuronLlamaForCausalLM(str(out)).config.neuron_config.kv_quant_config
    assert kv.k_quant_method is kv.v_quant_method is QuantizationType.PER_TENSOR_SYMMETRIC
    assert kv.quant_dtype is torch.float8_e4m3fn and kv.direct_cast is True
    assert written["kv_cache_quant"] is True and written["quantization_dtype"] == "int8"


def test_standin_fails_on_the_json_nxdi_writes_unless_rewritten(inf2: ModuleType, tmp_path: Path) -> None:
    """The stand-in reproduces the real failure: NxDI's own to_dict JSON trips KVQuantizationConfig's assert."""
    from neuronx_distributed.quantization.quantization_config import KVQuantizationConfig
    from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig

    config = InferenceConfig(NeuronConfig(kv_cache_quant=True, kv_quant_config=KVQuantizationConfig()))
    config.save(str(tmp_path))
    with pytest.raises(AssertionError, match="PER_TENSOR_SYMMETRIC"):
        InferenceConfig.load(str(tmp_path))


def test_int8_with_bf16_kv_sets_no_fp8_flags(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", dtype="int8", kv="bf16", seq_len=128))
    kwargs = calls(inf2, "NeuronConfig")[0]["kwargs"]
    assert kwargs["kv_cache_quant"] is False and "kv_quant_config" not in kwargs
    assert kwargs["quantization_dtype"] == "int8"
    assert json.loads((tmp_path / "c" / "neuron_config.json").read_text())["neuron_config"]["kv_quant_config"] is None
    for _, details in inf2.CALLS:
        assert details["env"]["XLA_HANDLE_SPECIAL_SCALAR"] is None and details["env"]["UNSAFE_FP8FNCAST"] is None


def test_reads_stage1_not_convert_file(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "stage1"
    shutil.copytree(model_dir, model)
    (model / "modules_to_not_convert.json").write_text(json.dumps({"modules_to_not_convert": ["layers.1.mlp"]}))
    compile_model(CompileOptions(model=str(model), out=tmp_path / "c", seq_len=128))
    assert calls(inf2, "NeuronConfig")[0]["kwargs"]["modules_to_not_convert"] == ["layers.1.mlp", "lm_head"]


def test_neuron_config_file_drives_the_compile(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    spec = build_neuron_config_spec(
        model_dir, dtype="int8", kv="bf16", tp_degree=1, seq_len=64, modules_to_not_convert=["layers.0.self_attn"]
    )
    config_path, _ = write_config_files(spec, tmp_path / "cfg")
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", neuron_config=config_path))
    kwargs = calls(inf2, "NeuronConfig")[0]["kwargs"]
    assert (kwargs["quantization_dtype"], kwargs["tp_degree"], kwargs["seq_len"]) == ("int8", 1, 64)
    assert kwargs["modules_to_not_convert"] == ["layers.0.self_attn", "lm_head"]
    assert calls(inf2, "compile")[0]["env"]["UNSAFE_FP8FNCAST"] is None  # int8 weights, bf16 KV: no e4m3 cast


def test_bad_config_stops_before_any_nxdi_work(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="dtype: Input should be 'int8', 'f8e4m3' or 'f8e5m2'"):
        validated(CompileOptions, "compile", model=str(model_dir), out=tmp_path / "c", dtype="f8e4m3fn")
    with pytest.raises(NeuronforgeError, match="NeuronCores"):
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", tp=4))
    with pytest.raises(NeuronforgeError, match="f8e5m2 weights are not supported"):
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", dtype="f8e5m2", kv="bf16"))
    with pytest.raises(NeuronforgeError, match="cannot be sharded") as info:
        compile_model(
            CompileOptions(model=str(model_dir), out=tmp_path / "c", dtype="f8e4m3", qtype="per_tensor_symmetric")
        )
    assert "Cannot get channel axis" in (info.value.fix or "")
    assert inf2.CALLS == [] and not (tmp_path / "c").exists()


def test_standin_rejects_the_fp8_per_tensor_scale_like_nxdi(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    """Why B3 is refused: the 0-dim scale of NxD's fp8 per-tensor quantizer breaks NxDI's GQA sharding."""
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.llama.modeling_llama import LlamaInferenceConfig, NeuronLlamaForCausalLM
    from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config

    (tmp_path / "q").mkdir()
    neuron_config = NeuronConfig(
        quantized=True, quantized_checkpoints_path=str(tmp_path / "q"), quantization_dtype="f8e4m3",
        quantization_type="per_tensor_symmetric", torch_dtype="bfloat16",
    )  # fmt: skip
    config = LlamaInferenceConfig(neuron_config, load_config=load_pretrained_config(str(model_dir)))
    NeuronLlamaForCausalLM.save_quantized_state_dict(str(model_dir), config)
    with pytest.raises(RuntimeError, match="Cannot get channel axis"):
        NeuronLlamaForCausalLM(str(model_dir), config).compile(str(tmp_path / "out"))


def test_failed_compile_leaves_no_output(
    inf2: ModuleType, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuronx_distributed_inference.models.llama.modeling_llama import NeuronLlamaForCausalLM

    def broken(self: Any, path: str) -> None:
        raise RuntimeError("neuronx-cc failed")

    monkeypatch.setattr(NeuronLlamaForCausalLM, "compile", broken)
    with pytest.raises(RuntimeError, match="neuronx-cc"):
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.partial-*"))
    assert not set(FP8_ENV) & os.environ.keys()


def test_existing_output_needs_overwrite(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()  # an earlier compile's folder (the marker lists what it wrote: core/outputs.py)
    (tmp_path / "c" / "model.pt").write_text("old")
    (tmp_path / "c" / OUTPUT_MARKER).write_text('{"files": ["model.pt"]}')
    with pytest.raises(NeuronforgeError, match="already exists"):
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c"))
    assert inf2.CALLS == []
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128, overwrite=True))
    assert (tmp_path / "c" / "model.pt").is_file()


def test_compile_only_never_loads_and_needs_no_device(
    nxdi: ModuleType, set_host: Callable[..., None], model_dir: Path, tmp_path: Path
) -> None:
    """B2: a CPU host (the SageMaker cross-compile processing job) quantizes, compiles and preshards only."""
    set_host(0)
    out = tmp_path / "c"
    compile_model(CompileOptions(model=str(model_dir), out=out, seq_len=128, compile_only=True))
    names = [name for name, _ in nxdi.CALLS]
    assert "compile" in names and "load" not in names and "generate" not in names
    assert (out / "weights" / "tp0_sharded_checkpoint.safetensors").is_file() and (out / "model.pt").is_file()
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["compile_only"] is True and record["smoke"] is None
    assert set(record["timings"]) == {"quantize_s", "compile_s"}


def test_without_neuron_cores_compile_refuses_before_any_work(
    nxdi: ModuleType, set_host: Callable[..., None], model_dir: Path, tmp_path: Path
) -> None:
    set_host(0)
    with pytest.raises(NeuronforgeError, match="no NeuronCores") as info:
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128))
    assert "--compile-only" in (info.value.fix or "")
    assert nxdi.CALLS == [] and not (tmp_path / "c").exists()


def test_tp_degree_beyond_the_host_cores_is_refused(
    nxdi: ModuleType, set_host: Callable[..., None], model_dir: Path, tmp_path: Path
) -> None:
    set_host(1)  # 2 NeuronCores; the spec targets an inf2.24xlarge with tp 4
    options = CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128, tp=4, instance="ml.inf2.24xlarge")
    with pytest.raises(NeuronforgeError, match="this host has 2 NeuronCores") as info:
        compile_model(options)
    assert "--tp-degree <= 2" in (info.value.fix or "") and nxdi.CALLS == []
    compile_model(options.model_copy(update={"compile_only": True}))  # cross-compiling for a bigger target is fine
    assert calls(nxdi, "NeuronConfig")[0]["kwargs"]["tp_degree"] == 4


def test_host_ram_for_the_fp32_load_is_checked(
    nxdi: ModuleType, set_host: Callable[..., None], model_dir: Path, tmp_path: Path
) -> None:
    set_host(1, ram_gib=1)
    with pytest.raises(NeuronforgeError, match="fp32") as info:
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128))
    assert "ml.trn1.2xlarge" in (info.value.fix or "") and nxdi.CALLS == []


def test_sdk_must_match_the_installed_nxdi(
    inf2: ModuleType, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda: "0.10.18399")
    with pytest.raises(NeuronforgeError, match="this host has 0.10.18399") as info:
        compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128, sdk="2.28"))
    assert info.value.fix == "pass --sdk 2.31"
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128, sdk="2.31"))
    record = json.loads((tmp_path / "c" / RECORD_FILE).read_text())
    assert record["sdk"] == "2.31" and record["installed"] == {"neuronx-distributed-inference": "0.10.18399"}


def test_sdk_check_compares_the_exact_nxdi_build(
    inf2: ModuleType, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NEW-9: an NxDI 0.10.17970 (SDK 2.30) host is not SDK 2.31's 0.10.18399, and an NxDI without pip metadata has
    no known SDK: both would record an SDK whose serving image loads another NxDI."""
    options = CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128, sdk="2.31")
    for installed, message in (("0.10.17970", "expects NxD Inference 0.10.18399"), (None, "no pip metadata")):
        monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda installed=installed: installed)
        with pytest.raises(NeuronforgeError, match=message):
            compile_model(options)
    assert not (tmp_path / "c").exists() and inf2.CALLS == []


def test_without_sdk_the_compile_targets_the_hosts_nxdi(
    inf2: ModuleType, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DLC/DLAMI's NxDI build decides the SDK when none is named (the local build suffix is ignored)."""
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "a", seq_len=128))
    assert json.loads((tmp_path / "a" / RECORD_FILE).read_text())["sdk"] == "2.28"  # the stand-in's metadata
    monkeypatch.setattr("neuronforge.neuron.nxdi.runtime.installed_nxdi_version", lambda: "0.10.18399+ed62453e")
    monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda: "0.10.18399+ed62453e")
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "b", seq_len=128))
    assert json.loads((tmp_path / "b" / RECORD_FILE).read_text())["sdk"] == "2.31"


def test_config_saved_by_transformers5_is_refused(inf2: ModuleType, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """N1: without top-level rope_theta, NxDI (transformers 4.57) would use RoPE theta 10000 whatever the model says."""
    assert "rope_theta" not in json.loads((tiny_llama_dir / "config.json").read_text())
    with pytest.raises(NeuronforgeError, match="rope_theta") as info:
        compile_model(CompileOptions(model=str(tiny_llama_dir), out=tmp_path / "c", seq_len=128))
    assert "neuronforge quantize" in (info.value.fix or "") and inf2.CALLS == []


def test_tokenizer_saved_by_transformers5_is_refused(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    """NEW-1: transformers 4.57 (NxDI's smoke test, vLLM) has no class TokenizersBackend; refused before any work."""
    model = tmp_path / "v5"
    shutil.copytree(model_dir, model)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer_config, "tokenizer_class": "TokenizersBackend"})
    )
    with pytest.raises(NeuronforgeError, match="TokenizersBackend") as info:
        compile_model(CompileOptions(model=str(model), out=tmp_path / "c", seq_len=128))
    assert "PreTrainedTokenizerFast" in (info.value.fix or "") and inf2.CALLS == []


def test_compiled_folder_tokenizer_is_one_transformers_457_loads(
    inf2: ModuleType, model_dir: Path, tmp_path: Path
) -> None:
    """compile re-saves the tokenizer (with transformers 5 here) and keeps the class name 4.57 knows."""
    compile_model(CompileOptions(model=str(model_dir), out=tmp_path / "c", seq_len=128))
    assert json.loads((tmp_path / "c" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )


def _as_mistral(model_dir: Path, out: Path) -> Path:
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_mistral_compiles_with_the_class_vllm_serves_it_with(
    inf2: ModuleType, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R2: NxDI 0.8's vLLM has no Mistral class (refused on 2.28); from 0.9 on it is NeuronMistralForCausalLM."""
    monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda: "0.10.18399")
    mistral = _as_mistral(model_dir, tmp_path / "mistral")
    with pytest.raises(NeuronforgeError, match="cannot serve model_type 'mistral'") as info:
        compile_model(CompileOptions(model=str(mistral), out=tmp_path / "c", seq_len=128, sdk="2.28"))
    assert info.value.fix == "use --sdk 2.31"
    compile_model(CompileOptions(model=str(mistral), out=tmp_path / "c", seq_len=128, sdk="2.31"))
    assert calls(inf2, "NeuronMistralForCausalLM") and not calls(inf2, "NeuronLlamaForCausalLM")
    assert type(calls(inf2, "NeuronMistralForCausalLM")[0]["config"]).__name__ == "MistralInferenceConfig"


def test_cli_compile_with_standin(inf2: ModuleType, model_dir: Path, tmp_path: Path) -> None:
    args = ["compile", "--model", str(model_dir), "--out", str(tmp_path / "c"), "--dtype", "f8e4m3"]
    result = CliRunner().invoke(app, [*args, "--tp-degree", "1", "--kv", "fp8", "--seq-len", "128"])
    assert result.exit_code == 0, result.output
    assert "notice:" in result.output and "added 'lm_head'" in result.output and "compiled:" in result.output
    assert calls(inf2, "NeuronConfig")[0]["kwargs"]["tp_degree"] == 1


def test_cli_compile_only_flag(
    nxdi: ModuleType, set_host: Callable[..., None], model_dir: Path, tmp_path: Path
) -> None:
    set_host(0)
    args = ["compile", "--model", str(model_dir), "--out", str(tmp_path / "c"), "--seq-len", "128"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--compile-only" in refused.output and "Traceback" not in refused.output
    result = CliRunner().invoke(app, [*args, "--compile-only"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / RECORD_FILE).read_text())["compile_only"] is True


FAMILY_CLASSES = {
    "llama3": "NeuronLlamaForCausalLM",
    "qwen2": "NeuronQwen2ForCausalLM",
    "qwen3": "NeuronQwen3ForCausalLM",
    "mistral": "NeuronMistralForCausalLM",
}


def _stage1(folder: Path, out: Path) -> Path:
    from neuronforge.hf.config_compat import make_portable

    shutil.copytree(folder, out)
    make_portable(out)
    return out


@pytest.mark.parametrize("sdk", ["2.28", "2.31"])
@pytest.mark.parametrize("family", list(FAMILY_CLASSES))
def test_each_family_compiles_with_the_class_vllm_serves_it_with(
    inf2: ModuleType,
    make_tiny_family: Callable[..., Path],
    tmp_path: Path,
    family: str,
    sdk: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NxDI's MODEL_TYPES (utils/constants.py:47-64 at cd3abf3, :49-66 at ef2731e): one class per family and SDK;
    the stand-in's class has the real one's required attributes and head size (tests/nxdi_standin/README.md)."""
    if sdk == "2.31":  # the stand-in's metadata says SDK 2.28's NxDI build
        monkeypatch.setattr("neuronforge.neuron.nxdi.runtime.installed_nxdi_version", lambda: "0.10.18399")
        monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda: "0.10.18399")
    model = _stage1(make_tiny_family(family), tmp_path / "m")
    options = CompileOptions(model=str(model), out=tmp_path / "c", dtype="f8e4m3", seq_len=128, sdk=sdk)
    if family == "mistral" and sdk == "2.28":
        with pytest.raises(NeuronforgeError, match="cannot serve model_type 'mistral'"):
            compile_model(options)
        assert inf2.CALLS == []
        return
    compile_model(options)
    assert [name for name, _ in inf2.CALLS if name.startswith("Neuron") and name.endswith("CausalLM")] == [
        FAMILY_CLASSES[family]
    ]
    spec = json.loads((tmp_path / "c" / RECORD_FILE).read_text())["spec"]
    if family == "qwen2":  # NxD's fp8 quantizer would drop the q/k/v biases: attention stays bf16
        assert {"layers.0.self_attn", "layers.1.self_attn"} <= set(spec["modules_to_not_convert"])
    else:
        assert not any(entry.endswith("self_attn") for entry in spec["modules_to_not_convert"])


def test_standin_classes_reject_what_the_real_ones_cannot_shard(
    inf2: ModuleType, make_tiny_family: Callable[..., Path], tmp_path: Path
) -> None:
    """Mistral's class sizes heads as hidden // heads (NEW-2): a head_dim-32 checkpoint of hidden 64 / 4 heads cannot be
    sharded; Qwen2's class adds q/k/v biases that an fp8 checkpoint without excluded attention lacks. neuronforge
    refuses the first before any work and keeps Qwen2's attention bf16 under fp8, so neither reaches NxDI."""
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.mistral.modeling_mistral import (
        MistralInferenceConfig,
        NeuronMistralForCausalLM,
    )
    from neuronx_distributed_inference.models.qwen2.modeling_qwen2 import NeuronQwen2ForCausalLM, Qwen2InferenceConfig
    from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config

    nemo_like = _stage1(make_tiny_family("mistral", head_dim=32), tmp_path / "nemo")
    with pytest.raises(NeuronforgeError, match=r"head_dim 32.*hidden_size // num_attention_heads = 16"):
        compile_model(CompileOptions(model=str(nemo_like), out=tmp_path / "c", seq_len=128, sdk="2.31"))
    assert inf2.CALLS == []
    qwen2 = _stage1(make_tiny_family("qwen2"), tmp_path / "qwen2")
    for model, dtype, config_cls, model_cls, error in (
        (nemo_like, "int8", MistralInferenceConfig, NeuronMistralForCausalLM, "cannot be sharded"),
        (qwen2, "f8e4m3", Qwen2InferenceConfig, NeuronQwen2ForCausalLM, r"[qkv]_proj\.bias is missing"),
    ):
        quantized = tmp_path / f"q-{model.name}"
        quantized.mkdir()
        neuron_config = NeuronConfig(
            quantized=True, quantized_checkpoints_path=str(quantized), quantization_dtype=dtype,
            quantization_type="per_channel_symmetric", torch_dtype="bfloat16",
        )  # fmt: skip
        config = config_cls(neuron_config, load_config=load_pretrained_config(str(model)))
        model_cls.save_quantized_state_dict(str(model), config)
        with pytest.raises(RuntimeError, match=error):
            model_cls(str(model), config).compile(str(tmp_path / f"out-{model.name}"))
