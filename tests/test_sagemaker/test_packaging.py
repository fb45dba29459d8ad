"""`neuronforge package`: layout, manifest checksums, tamper detection, and the serve wrapper reading the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.fakes import make_compiled

from neuronforge.core.hashing import sha256_file
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker import packaging
from neuronforge.sagemaker.packaging import package_model, verify_package

SERVE = Path(packaging.__file__).parent / "serving" / "serve"


@pytest.fixture
def package(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    return package_model(tmp_path / "pkg", compiled=make_compiled(tmp_path), checkpoint=tiny_llama_dir)


def test_layout_and_manifest(package: Path, tiny_llama_dir: Path) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    files = manifest["files"]
    assert {
        "compiled/model.pt",
        "compiled/neuron_config.json",
        "checkpoint/config.json",
        "checkpoint/tokenizer.json",
        "serving.json",
    } <= set(files)
    assert "manifest.json" not in files
    for name, entry in files.items():
        assert entry["sha256"] == sha256_file(package / name)
        assert entry["size"] == (package / name).stat().st_size
    weights = next(tiny_llama_dir.glob("*.safetensors"))
    assert files[f"checkpoint/{weights.name}"]["sha256"] == sha256_file(weights)
    assert manifest["versions"]["neuronforge"] and manifest["versions"]["torch"]
    serving = json.loads((package / "serving.json").read_text())
    assert serving["tp_degree"] == 2 and serving["max_model_len"] == 256 and serving["fp8"] is True
    assert serving["env"]["UNSAFE_FP8FNCAST"] == "1" and manifest["serving"] == serving
    assert verify_package(package) == manifest
    assert not list(package.parent.glob(".pkg.partial-*"))


def test_int8_without_fp8_kv_has_no_fp8_env(tmp_path: Path, tiny_llama_dir: Path) -> None:
    compiled = make_compiled(tmp_path)
    config = json.loads((compiled / "neuron_config.json").read_text())
    config["neuron_config"]["kv_cache_quant"] = False
    (compiled / "neuron_config.json").write_text(json.dumps(config))
    out = package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    serving = json.loads((out / "serving.json").read_text())
    assert serving["fp8"] is False and "UNSAFE_FP8FNCAST" not in serving["env"]


@pytest.mark.parametrize("tamper", ["change", "delete", "add"])
def test_verify_detects_tampering(package: Path, tamper: str) -> None:
    target = package / "compiled" / "model.pt"
    if tamper == "change":
        data = bytearray(target.read_bytes())
        data[100] ^= 1
        target.unlink()  # hard-linked from the source: replace, don't edit in place
        target.write_bytes(bytes(data))
        message = "checksum mismatch: compiled/model.pt"
    elif tamper == "delete":
        target.unlink()
        message = "missing: compiled/model.pt"
    else:
        (package / "compiled" / "stray.bin").write_bytes(b"x")
        message = "not in manifest: compiled/stray.bin"
    with pytest.raises(NeuronforgeError, match=message):
        verify_package(package)


def test_bad_inputs(tmp_path: Path, tiny_llama_dir: Path, tiny_tokenizer_dir: Path) -> None:
    compiled = make_compiled(tmp_path, tp_degree=2)
    with pytest.raises(NeuronforgeError, match="differs from the compiled tp_degree 2"):
        package_model(tmp_path / "a", compiled=compiled, checkpoint=tiny_llama_dir, tp_degree=4)
    with pytest.raises(NeuronforgeError, match="not an NxDI compiled directory"):
        package_model(tmp_path / "b", compiled=tiny_llama_dir, checkpoint=tiny_llama_dir)
    with pytest.raises(NeuronforgeError, match="not a quantized HF checkpoint"):
        package_model(tmp_path / "c", compiled=compiled, checkpoint=compiled)
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    for item in tiny_llama_dir.iterdir():
        if item.name in ("config.json",) or item.suffix == ".safetensors":
            shutil.copy2(item, no_tok / item.name)
    with pytest.raises(NeuronforgeError, match="no tokenizer"):
        package_model(tmp_path / "d", compiled=compiled, checkpoint=no_tok)
    out = package_model(tmp_path / "e", compiled=compiled, checkpoint=no_tok, tokenizer=tiny_tokenizer_dir)
    assert (out / "checkpoint" / "tokenizer.json").is_file()
    with pytest.raises(NeuronforgeError, match="already exists"):
        package_model(out, compiled=compiled, checkpoint=no_tok, tokenizer=tiny_tokenizer_dir)
    assert not [p for p in tmp_path.iterdir() if p.name in ("a", "b", "c", "d")]


def test_serve_wrapper_builds_vllm_command(package: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SERVE), "--print"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NEURONFORGE_MODEL_DIR": str(package)},
    )
    plan = json.loads(result.stdout)
    argv = plan["argv"]
    assert argv[:3] == ["vllm", "serve", str(package / "checkpoint")]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--port") + 1] == "8080"
    assert argv[argv.index("--served-model-name") + 1] == "neuronforge"
    assert plan["env"]["VLLM_NEURON_FRAMEWORK"] == "neuronx-distributed-inference"
    assert plan["env"]["NEURON_COMPILED_ARTIFACTS"] == str(package / "compiled")


def test_package_fills_an_existing_empty_directory_but_not_a_full_one(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """SageMaker creates a processing output LocalPath before the entrypoint runs; packaging into it must work."""
    out = tmp_path / "opt-ml-processing-output-package"
    out.mkdir()
    package_model(out, compiled=make_compiled(tmp_path), checkpoint=tiny_llama_dir)
    assert verify_package(out)["serving"]["tp_degree"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(NeuronforgeError, match="already exists"):
        package_model(out, compiled=make_compiled(tmp_path / "again"), checkpoint=tiny_llama_dir)
