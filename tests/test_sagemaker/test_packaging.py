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


def test_package_tokenizer_is_one_transformers_457_loads(package: Path, tiny_llama_dir: Path) -> None:
    """NEW-1: the endpoint's vLLM runs transformers 4.57, which has no TokenizersBackend; the source stays as it was."""
    source = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())
    packaged = json.loads((package / "checkpoint" / "tokenizer_config.json").read_text())
    assert source["tokenizer_class"] == "TokenizersBackend"  # saved by transformers 5
    assert packaged == {**source, "tokenizer_class": "PreTrainedTokenizerFast"}
    assert verify_package(package)


def test_package_refuses_a_static_batching_compile(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """NEW-3: vLLM serves max_num_seqs = batch_size requests in their own KV slots; static batching mixes them."""
    compiled = make_compiled(tmp_path)
    config = json.loads((compiled / "neuron_config.json").read_text())
    config["neuron_config"].update(batch_size=4, ctx_batch_size=4, tkg_batch_size=4)  # NxDI's defaults without CB
    (compiled / "neuron_config.json").write_text(json.dumps(config))
    with pytest.raises(NeuronforgeError, match="without continuous batching"):
        package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    config["neuron_config"].update(ctx_batch_size=1, is_continuous_batching=True)
    (compiled / "neuron_config.json").write_text(json.dumps(config))
    out = package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    assert json.loads((out / "serving.json").read_text())["max_num_seqs"] == 4


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


def test_package_leaves_out_nxdi_quantized_checkpoint_and_reports_sizes(package: Path, tmp_path: Path) -> None:
    """R6: compiled/quantized_checkpoint/ (NxDI's own quantized copy, fp32 extras) is not needed to serve."""
    manifest = json.loads((package / "manifest.json").read_text())
    assert not [name for name in manifest["files"] if "quantized_checkpoint" in name]
    assert not (package / "compiled" / "quantized_checkpoint").exists()
    sizes = manifest["sizes"]
    assert sizes["left_out"] == {"compiled/quantized_checkpoint": 7000}
    assert sizes["package"] == sum(entry["size"] for entry in manifest["files"].values())  # before manifest.json
    assert sizes["checkpoint"] + sizes["compiled"] + (package / "serving.json").stat().st_size == sizes["package"]
    assert (tmp_path / "compiled-src" / "quantized_checkpoint" / "model.safetensors").is_file()  # source untouched


def test_package_refuses_a_compile_no_serving_image_loads(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """R5/NEW-9: the compile's SDK picks the serving image, whose exact NxDI build must be the one that compiled."""
    compiled = make_compiled(tmp_path / "other-build")
    record = json.loads((compiled / "neuronforge_compile.json").read_text())
    record["installed"] = {"neuronx-distributed-inference": "0.8.15000"}
    (compiled / "neuronforge_compile.json").write_text(json.dumps(record))
    with pytest.raises(
        NeuronforgeError, match=r"NxD Inference 0\.8\.15000, but the SDK 2\.28 serving image .* 0\.8\.16251"
    ):
        package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    record.update(sdk="2.30")
    (compiled / "neuronforge_compile.json").write_text(json.dumps(record))
    with pytest.raises(NeuronforgeError, match="no serving image for Neuron SDK '2.30'"):
        package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    compiled = make_compiled(tmp_path / "norecord")
    (compiled / "neuronforge_compile.json").unlink()
    with pytest.raises(NeuronforgeError, match="Neuron SDK is unknown"):
        package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)
    assert not (tmp_path / "pkg").exists()


def test_package_records_the_serving_image_of_its_compile_sdk(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """NEW-4: a 2.28 compile (the default) and a 2.31 compile each package for their own SDK's image."""
    for sdk, base in (("2.28", "0.13.0-neuronx-py312-sdk2.28.0"), ("2.31", "0.16.0-neuronx-py312-sdk2.31.1")):
        out = package_model(
            tmp_path / sdk, compiled=make_compiled(tmp_path / f"c{sdk}", sdk=sdk), checkpoint=tiny_llama_dir
        )
        manifest = verify_package(out)
        assert manifest["compile_sdk"] == sdk and base in manifest["serving_image"]


def test_package_refuses_kv_config_nxdi_cannot_reread(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """B1: a compiled folder whose neuron_config.json still holds NxDI's serialized Enums would kill the endpoint."""
    compiled = make_compiled(tmp_path)
    raw = json.loads((compiled / "neuron_config.json").read_text())
    enum = {"_value_": "per_tensor_symmetric", "_name_": "PER_TENSOR_SYMMETRIC", "_sort_order_": 0}
    raw["neuron_config"]["kv_quant_config"] = {"k_quant_method": enum, "v_quant_method": enum, "direct_cast": True}
    (compiled / "neuron_config.json").write_text(json.dumps(raw))
    with pytest.raises(NeuronforgeError, match="k_quant_method, v_quant_method as serialized Enums"):
        package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)


def test_image_serve_cannot_be_shadowed_on_path() -> None:
    """R8: `docker run <image> serve` must run our wrapper whatever the base image's PATH dirs hold."""
    import re

    dockerfile = (SERVE.parent / "Dockerfile").read_text()
    # The base image's PATH (aws-neuron/deep-learning-containers vllm/inference/0.16.0/Dockerfile.neuronx:19-20).
    path = "/opt/conda/bin:/opt/aws/neuron/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    path += ":/opt/amazon/efa/bin"
    for value in re.findall(r"^ENV PATH=(\S+)$", dockerfile, re.M):
        path = value.replace("${PATH}", path).replace("$PATH", path)
    (serve_dir,) = re.findall(r"^COPY neuronforge/sagemaker/serving/serve (\S+)/serve$", dockerfile, re.M)
    assert path.split(":")[0] == serve_dir, "the folder holding our serve must come first on PATH"
    assert re.search(r"^ENTRYPOINT \[\]$", dockerfile, re.M) and 'CMD ["serve"]' in dockerfile
