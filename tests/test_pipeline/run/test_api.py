"""`neuronforge run` on a real tiny Llama: end to end, no work on a re-run, SIGKILL mid-AutoRound, s3:// via moto."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.core.hashing import content_hash
from neuronforge.core.outputs import OUTPUT_MARKER
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.pipeline.run.manifest import Manifest

# Small enough for 2 shared cores; the compile stage needs a Neuron device and is skipped here.
QUICK = ["--nsamples", "2", "--calib-seq-len", "32", "--eval-tokens", "128", "--seq-len", "128"]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _started(run_dir: Path) -> dict[str, str | None]:
    return {name: record.started_at for name, record in Manifest.load(run_dir).stages.items()}


@pytest.fixture(scope="module")
def tiny(make_tiny_llama: Callable[..., Path]) -> Path:
    return make_tiny_llama("tiny-run")


def test_cli_run_end_to_end_then_nothing_to_do_then_only_what_changed(tiny: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["run", "--model", str(tiny), "--out", str(run_dir), "--iters", "2", *QUICK]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(run_dir)
    assert {n: r.status for n, r in manifest.stages.items()} == {
        "model": "done",
        "quantize": "done",
        "emulate": "done",
        "compile": "skipped",
        "package": "done",
    }
    assert "no Neuron device" in manifest.stages["compile"].message
    assert manifest.config["iters"] == 2 and manifest.stages["quantize"].versions["auto-round"] != "absent"

    kept = manifest.stages["quantize"].summary["modules_to_not_convert"]
    emulation = json.loads((run_dir / "emulate" / "emulation.json").read_text())
    assert set(emulation["perplexity"]["bf16"]) == {"britannica", "hamlet", "verne"}
    for name, base in emulation["perplexity"]["bf16"].items():
        assert 1.0 < base < 1e4 and abs(emulation["perplexity"]["neuron"][name] / base - 1.0) < 0.5
    assert emulation["kv_risk"]["values"] > 0 and emulation["modules_to_not_convert"] == kept
    assert "Neuron-emulated ppl" in result.output
    assert emulation["device"]["device"] == "cpu" and emulation["device"]["variants"] == {
        "bf16": "cpu",
        "neuron": "cpu",
    }
    report = json.loads((run_dir / "quantize" / "checkpoint" / "quantization_report.json").read_text())
    assert report["device"]["device"] == "cpu"
    assert f"model: {tiny}" in result.output
    summary = _flat(result.output)
    assert "recovery and the smallest inf2 instance" in summary
    assert "│ bf16 (reference) │ 100.00 │ ml.inf2.xlarge (tp 2, $0.76/h) │" in summary
    assert "│ int8 (this run) │" in summary and summary.count("ml.inf2.xlarge (tp 2, $0.76/h)") == 2

    ready = run_dir / "package" / "compile_input"
    neuron_config = json.loads((ready / "neuron_config.json").read_text())
    assert neuron_config["quantization_dtype"] == "int8" and neuron_config["modules_to_not_convert"] == kept
    assert neuron_config["kv_cache_quant"] is True
    assert content_hash(ready / "checkpoint") == content_hash(run_dir / "quantize" / "checkpoint")
    assert "--stages compile,package" in _flat(result.output)

    before = _started(run_dir)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert _flat(again.output).count("up to date: inputs unchanged") == 4
    assert _started(run_dir) == before

    changed = CliRunner().invoke(app, [*args, "--kv", "bf16"])  # only emulation and packaging depend on kv
    assert changed.exit_code == 0, changed.output
    after = _started(run_dir)
    assert [n for n in after if after[n] != before[n] and n != "compile"] == ["emulate", "package"]
    assert json.loads((ready / "neuron_config.json").read_text())["kv_cache_quant"] is False


def test_sigkill_mid_autoround_then_rerun_resumes_without_partial_output(tiny: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "neuronforge.cli",
        "run",
        "--model",
        str(tiny),
        "--out",
        str(run_dir),
        "--stages",
        "model,quantize",
        "--iters",
        "8",
        "--verbose",  # auto-round's log lines on the terminal too
        *QUICK,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tuning = threading.Event()

    def watch() -> None:
        for line in iter(proc.stdout.readline, ""):
            if "caching done" in line:  # auto-round's log: block inputs cached, tuning begins
                tuning.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert tuning.wait(300), "AutoRound never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = Manifest.load(run_dir)
    assert (killed.stages["model"].status, killed.stages["quantize"].status) == ("done", "running")
    assert not (run_dir / "quantize").exists()
    assert any(".quantize.partial-" in p.name for p in run_dir.iterdir())
    model_started = killed.stages["model"].started_at

    result = CliRunner().invoke(app, cmd[3:])
    assert result.exit_code == 0, result.output
    resumed = Manifest.load(run_dir)
    assert resumed.stages["quantize"].status == "done"
    assert resumed.stages["model"].started_at == model_started  # resumed at quantize, not from scratch
    assert not [p for p in run_dir.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    checkpoint = run_dir / "quantize" / "checkpoint"
    assert {"config.json", "model.safetensors", "modules_to_not_convert.json"} <= {p.name for p in checkpoint.iterdir()}
    assert resumed.stages["quantize"].output_hashes["dir"] == content_hash(run_dir / "quantize")


def test_s3_paths_end_to_end_and_a_second_host_continues(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    from neuronforge.pipeline.run import storage
    from neuronforge.pipeline.run.api import run_pipeline

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "gpu-host"))
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(300)))
    with mock_aws():
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="nf-runs")
        storage.upload_dir(tiny, "s3://nf-runs/models/tiny")
        storage.upload_file(text, "s3://nf-runs/texts/notes.txt")
        config = RunConfig(
            model="s3://nf-runs/models/tiny",
            text="s3://nf-runs/texts/notes.txt",
            out="s3://nf-runs/runs/r1",
            stages=["model", "quantize", "emulate"],
            autoround=False,
            nsamples=2,
            calib_seq_len=32,
            eval_tokens=128,
            seq_len=128,
        )
        first = run_pipeline(config)
        assert (
            first.remote == "s3://nf-runs/runs/r1"
            and first.run_dir == tmp_path / "gpu-host" / "s3" / "nf-runs" / "runs" / "r1"
        )
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="nf-runs", Prefix="runs/r1/")["Contents"]}
        assert {
            "runs/r1/manifest.json",
            "runs/r1/quantize/checkpoint/model.safetensors",
            "runs/r1/emulate/emulation.json",
        } <= keys
        # no lock or partial files uploaded (the output marker is: it lists what neuronforge wrote there)
        assert not [k for k in keys if "/." in k and not k.endswith(f"/{OUTPUT_MARKER}")]
        emulation = json.loads(s3.get_object(Bucket="nf-runs", Key="runs/r1/emulate/emulation.json")["Body"].read())
        assert set(emulation["perplexity"]["bf16"]) == {"notes"}

        # Another host continues the same run from the bucket: the GPU host's cache (and model mirror) is
        # gone, the run directory comes down from S3, and only `package` runs.
        shutil.rmtree(tmp_path / "gpu-host")
        monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "inf2-host"))
        second = run_pipeline(config.model_copy(update={"stages": ["package"]}))
        before, after = first.manifest.stages, second.manifest.stages
        assert all(after[n].started_at == before[n].started_at for n in ("model", "quantize", "emulate"))
        assert after["package"].status == "done"
        assert (second.run_dir / "package" / "compile_input" / "checkpoint" / "model.safetensors").is_file()
        remote_manifest = json.loads(s3.get_object(Bucket="nf-runs", Key="runs/r1/manifest.json")["Body"].read())
        assert remote_manifest["stages"]["package"]["status"] == "done"
        assert (
            s3.head_object(Bucket="nf-runs", Key="runs/r1/package/compile_input/neuron_config.json")["ContentLength"]
            > 0
        )


def test_run_on_cuda_without_a_usable_gpu_refuses_before_any_stage(tiny: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--model", str(tiny), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert result.exit_code != 0 and "CPU-only build" in _flat(result.output)
    assert not (tmp_path / "run" / "manifest.json").exists()
