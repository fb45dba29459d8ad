"""`neuronforge doctor`: each probe on controlled inputs, and the command's JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuronforge import doctor
from neuronforge.cli import app
from neuronforge.neuron import host
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, neuron_sdk

GIB = 1 << 30


def _devices(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "dev"
    root.mkdir()
    for name in names:
        (root / name).touch()
    return root


def test_neuron_absent_partial_and_ready(tmp_path: Path) -> None:
    none = doctor.check_neuron(_devices(tmp_path, "null", "neuron_x"), versions={})
    assert none.status == "absent" and "no /dev/neuron* devices" in none.detail
    assert "--stages compile,package" in none.fix
    dev = tmp_path / "dev"
    (dev / "neuron0").touch()
    (dev / "neuron1").touch()
    no_sdk = doctor.check_neuron(dev, versions={"neuronx-distributed-inference": "absent"})
    assert no_sdk.status == "warn" and "2 device(s) (neuron0, neuron1)" in no_sdk.detail
    assert "pip.repos.neuron.amazonaws.com" in no_sdk.fix
    pins = {name: version for name, version in neuron_sdk(DEFAULT_SDK).pins().items() if version}
    assert doctor.check_neuron(dev, versions=pins).status == "ok"
    placeholder = doctor.check_neuron(dev, versions={**pins, "neuronx-distributed-inference": "0.1.0"})
    assert placeholder.status == "warn" and "not the pinned versions" in placeholder.detail
    assert host.neuron_unavailable(tmp_path / "empty-dev").startswith("no Neuron device")
    assert "NxD Inference is not installed" in host.neuron_unavailable(dev)


def test_aws_credentials_and_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    creds, region = doctor.check_aws(env={})
    assert (creds.status, region.status) == ("absent", "warn")
    assert "aws configure" in creds.fix and "AWS_DEFAULT_REGION" in region.fix
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    checks = doctor.check_aws(env={"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"})
    assert [(c.name, c.status) for c in checks] == [
        ("AWS credentials", "ok"),
        ("AWS region", "ok"),
        ("AWS endpoint", "warn"),
    ]
    assert "env" in checks[0].detail and checks[1].detail == "us-west-2"


def test_disk_memory_and_model_size(tmp_path: Path, tiny_llama_dir: Path) -> None:
    size, note = doctor.model_size(str(tiny_llama_dir))
    assert size == sum(p.stat().st_size for p in tiny_llama_dir.glob("*.safetensors")) and size > 0
    assert doctor.model_size("s3://bucket/model")[0] is None
    assert "no such folder" in doctor.model_size(str(tmp_path / "nope"))[1]
    assert doctor.check_disk(tmp_path / "not" / "yet", size).status == "ok"
    huge = doctor.check_disk(tmp_path, 10**18)
    assert huge.status == "warn" and "NEURONFORGE_CACHE" in huge.fix
    small = doctor.ModelShape(GIB, 2, 64, 128, 1000)
    assert doctor.check_memory(small, total=GIB).status == "warn"
    assert doctor.check_memory(small, total=16 * GIB).status == "ok"


def test_doctor_command_json(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--json", "--model", str(tiny_llama_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    names = [check["name"] for check in payload["checks"]]
    assert names[:2] == ["CUDA GPU", "Neuron"] and {"AWS credentials", "Disk", "Memory"} <= set(names)
    assert any(line.startswith("CPU emulation") for line in payload["can"])
    human = CliRunner().invoke(app, ["doctor", "--model", str(tiny_llama_dir), "--out", str(tmp_path)])
    assert human.exit_code == 0 and "neuronforge doctor" in human.output


BENCH = {  # benchmarks/bench_scale.py's models (SmolLM2's vocabulary)
    "0.3b": doctor.ModelShape(326_149_120, 20, 1024, 2816, 49152),
    "1.2b": doctor.ModelShape(1_170_302_976, 22, 2048, 5632, 49152),
}


def test_memory_estimate_covers_the_sensitivity_at_quantize_defaults() -> None:
    """The sensitivity analysis keeps every decoder layer's fp32 input for all calibration tokens on the host, and
    works a batch of them through one layer at a time. At quantize's defaults (32 x 256 tokens; /usr/bin/time -v,
    docs/benchmarks.md, "Host-memory fits") the benchmark's 0.3B model peaked at 2.21 GB and its 1.2B model at 5.22 GB, where 2.8
    bytes per parameter + 1 GB said 1.91 and 4.28 GB."""
    for shape, measured in ((BENCH["0.3b"], 2.21e9), (BENCH["1.2b"], 5.22e9)):
        need, sensitivity, layer_inputs = doctor.stage1_peak(shape)
        assert layer_inputs == (shape.layers + 1) * 8192 * shape.hidden * 4 and need >= sensitivity > measured
    short = doctor.check_memory(BENCH["1.2b"], total=int(5.22e9))
    assert short.status == "warn" and "layer inputs of 32 x 256 calibration tokens" in short.detail
    assert "--nsamples" in short.fix
    assert doctor.stage1_peak(BENCH["1.2b"], nsamples=2, seqlen=32)[0] < doctor.stage1_peak(BENCH["1.2b"])[0]


def test_memory_estimate_covers_autoround_and_its_check_against_rtn() -> None:
    """After tuning, the check against RTN holds RTN's emulated model (1 B/param) beside the bf16 model, and the bf16
    reference's logits on the validation and test text: `bench_scale.py --stages autoround` peaked at 2.51 GB (0.3B) and
    4.96 GB (1.2B), where 2.8 bytes per parameter + 1 GB said 1.91 and 4.28 GB. The logits grow with the vocabulary."""
    for shape, measured in ((BENCH["0.3b"], 2.51e9), (BENCH["1.2b"], 4.96e9)):
        need = doctor.stage1_peak(shape, nsamples=2, seqlen=32)[0]  # (the benchmark's budget: AutoRound's phase)
        assert need > measured
        short = doctor.check_memory(shape, total=int(measured), nsamples=2, seqlen=32)
        assert short.status == "warn" and "while AutoRound tunes and is compared with RTN" in short.detail
    small_vocab, large_vocab = BENCH["1.2b"], doctor.ModelShape(1_170_302_976, 22, 2048, 5632, 128256)
    assert doctor.stage1_peak(large_vocab, 2, 32)[0] - doctor.stage1_peak(small_vocab, 2, 32)[0] > 1e9


def test_doctor_names_a_driver_too_old_for_the_torch_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The install story is checked: a GPU host whose driver cannot run this torch's CUDA is a warning with the fix."""
    import torch

    from neuronforge.doctor import check_cuda

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    check = check_cuda(problem="torch cannot use the GPU: driver too old", present=True, driver_cuda="12.4")
    assert check.status == "warn"
    assert "driver supports CUDA up to 12.4, this torch needs CUDA 13.0" in check.detail
    assert "download.pytorch.org" in (check.fix or "")
    assert check_cuda(problem="CPU-only build", present=False).status == "absent"
    cpu_build = check_cuda(problem="this torch is a CPU-only build", present=True, driver_cuda="13.0")
    assert cpu_build.status == "warn" and "CPU-only" in cpu_build.detail


# Llama-3-8B, Mistral-Nemo-12B and Llama-3-70B (config.json: layers, hidden_size, intermediate_size, vocab_size)
LARGE = {
    "8B": doctor.ModelShape(8_030_261_248, 32, 4096, 14336, 128256),
    "12B": doctor.ModelShape(12_247_782_400, 40, 5120, 14336, 131072),
    "70B": doctor.ModelShape(70_553_706_496, 80, 8192, 28672, 128256),
}


def test_a_gpu_budget_keeps_host_memory_bounded() -> None:
    """At 128 x 2048 calibration tokens (docs/gpu.md's largest budget) the first-order pass used to hold
    (layers + 1) x 262144 x hidden x 4 bytes of layer inputs: 142 GB at 8B. It scores at most 8192 tokens now."""
    for name, shape in LARGE.items():
        default, _, default_inputs = doctor.stage1_peak(shape)
        large, _, inputs = doctor.stage1_peak(shape, nsamples=128, seqlen=2048)
        assert inputs == default_inputs == (shape.layers + 1) * 8192 * shape.hidden * 4, name
        assert large < 1.4 * default, name  # only the batch of windows through one layer grows
    assert doctor.stage1_peak(LARGE["8B"], nsamples=128, seqlen=2048)[0] < 35e9  # was 170 GB


def test_doctor_sizes_the_host_for_the_budget_asked(tiny_llama_dir: Path, tmp_path: Path) -> None:
    def memory(*budget: str) -> str:
        result = CliRunner().invoke(
            app, ["doctor", "--json", "--model", str(tiny_llama_dir), "--out", str(tmp_path), *budget]
        )
        assert result.exit_code == 0, result.output
        return next(c for c in json.loads(result.output)["checks"] if c["name"] == "Memory")["detail"]

    assert "32 x 256 calibration tokens" in memory() or "AutoRound" in memory()
    assert memory("--nsamples", "2", "--calib-seq-len", "64") != memory("--preset", "gpu")
