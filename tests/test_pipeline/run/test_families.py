"""`neuronforge run` end to end on a tiny model of each supported family, the compile stage on the NxDI stand-in
(tests/nxdi_standin) with a fake Neuron device: quantize -> emulate -> neuron config -> compile -> package."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import neuronforge.neuron.nxdi.compile as compile_module
from neuronforge.cli import app
from neuronforge.neuron.host import DEV_ROOT_ENV
from neuronforge.pipeline.run.manifest import Manifest

STANDIN = Path(__file__).resolve().parents[2] / "nxdi_standin"
QUICK = ["--nsamples", "2", "--calib-seq-len", "32", "--eval-tokens", "128", "--seq-len", "128", "--no-autoround"]
CLASSES = {
    "llama3": "NeuronLlamaForCausalLM",
    "qwen2": "NeuronQwen2ForCausalLM",
    "qwen3": "NeuronQwen3ForCausalLM",
    "mistral": "NeuronMistralForCausalLM",
}


def _drop_standin_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("neuronx_distributed", "neuronx_distributed_inference")]:
        del sys.modules[name]


@pytest.fixture()
def neuron_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    """The stand-in NxDI importable, one fake Neuron device (2 NeuronCores) and 64 GiB of RAM."""
    _drop_standin_modules()
    monkeypatch.syspath_prepend(str(STANDIN))
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "neuron0").touch()
    monkeypatch.setenv(DEV_ROOT_ENV, str(dev))
    monkeypatch.setattr(compile_module, "host_memory_bytes", lambda: 64 * 2**30)
    # the runs compile for SDK 2.31 (Mistral needs it); the stand-in's metadata says SDK 2.28's NxDI build
    monkeypatch.setattr("neuronforge.neuron.nxdi.runtime.installed_nxdi_version", lambda: "0.10.18399")
    monkeypatch.setattr(compile_module, "installed_nxdi_version", lambda: "0.10.18399")
    import neuronx_distributed_inference

    neuronx_distributed_inference.CALLS.clear()
    yield neuronx_distributed_inference
    _drop_standin_modules()


@pytest.mark.parametrize(
    "family, dtype", [("llama3", "int8"), ("qwen2", "f8e4m3"), ("qwen3", "int8"), ("mistral", "int8")]
)
def test_each_family_runs_end_to_end(
    neuron_host, make_tiny_family: Callable[..., Path], tmp_path: Path, family: str, dtype: str
) -> None:
    run_dir = tmp_path / "run"
    args = ["run", "--model", str(make_tiny_family(family)), "--out", str(run_dir), "--dtype", dtype, "--sdk", "2.31"]
    result = CliRunner().invoke(app, [*args, *QUICK])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(run_dir)
    assert {n: r.status for n, r in manifest.stages.items()} == dict.fromkeys(
        ("model", "quantize", "emulate", "compile", "package"), "done"
    )
    models = [name for name, _ in neuron_host.CALLS if name.startswith("Neuron") and name.endswith("CausalLM")]
    assert models and set(models) == {CLASSES[family]}
    kept = manifest.stages["quantize"].summary["modules_to_not_convert"]
    emulation = json.loads((run_dir / "emulate" / "emulation.json").read_text())
    assert emulation["modules_to_not_convert"] == kept
    for name, base in emulation["perplexity"]["bf16"].items():
        assert 1.0 < base < 1e4 and abs(emulation["perplexity"]["neuron"][name] / base - 1.0) < 0.5
    if family == "qwen2":  # fp8 drops biases: attention bf16 in stage 1, the emulator and the compiled config alike
        assert {"layers.0.self_attn", "layers.1.self_attn"} <= set(kept)
    assert manifest.stages["package"].summary["kind"] == "endpoint"  # packaged from the stand-in's compile
    compiled = json.loads(next(run_dir.glob("compile/**/neuronforge_compile.json")).read_text())
    assert compiled["spec"]["modules_to_not_convert"] == kept
