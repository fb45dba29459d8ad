"""The jobs' container commands, run locally: they must work with the real `neuronforge quantize/compile/package`.

Only container paths (/opt/ml/...) are mapped to local folders; entrypoints, scripts and flags are the ones
the SageMaker requests carry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testkit.fakes import make_compiled
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.sagemaker.packaging import package_model, verify_package
from neuronforge.sagemaker.requests import JobSettings, compile_job_request, quantize_job_request


def test_quantize_job_arguments_run_neuronforge_quantize(tmp_path: Path, tiny_llama_dir: Path) -> None:
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        options={"iters": 1, "nsamples": 2, "calib_seq_len": 32, "autoround": False},
    )
    mapping = {"/opt/ml/input/data/model": str(tiny_llama_dir), "/opt/ml/model/checkpoint": str(tmp_path / "ckpt")}
    args = [mapping.get(a, a) for a in request["AlgorithmSpecification"]["ContainerArguments"]]
    assert args[0] == "quantize"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "modules_to_not_convert.json").is_file()
    # The quantize output is a valid checkpoint for the endpoint package.
    package = package_model(tmp_path / "pkg", compiled=make_compiled(tmp_path), checkpoint=tmp_path / "ckpt")
    assert "checkpoint/modules_to_not_convert.json" in verify_package(package)["files"]


def test_compile_job_command_runs_and_packages(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """The compile job's entrypoint script + arguments, with the in-repo NxDI stand-in playing NxDI."""
    request = compile_job_request(
        JobSettings(name="nf-c", role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.2xlarge"),
        checkpoint_s3="s3://nf-b/c/",
        output_s3="s3://nf-b/o/",
        tp_degree=2,
        seq_len=128,
    )
    spec = request["AlgorithmSpecification"]
    channel = "/opt/ml/input/data/checkpoint"
    args = [str(tiny_llama_dir) if a == channel else a for a in spec["ContainerArguments"]]
    standin = Path(__file__).resolve().parents[1] / "nxdi_standin"
    env = {
        **os.environ,
        **request["Environment"],
        "NF_CHECKPOINT": str(tiny_llama_dir),
        "NF_PACKAGE_OUT": str(tmp_path / "package"),
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": str(standin),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    manifest = verify_package(tmp_path / "package")
    assert manifest["serving"]["tp_degree"] == 2 and manifest["serving"]["max_model_len"] == 128
    assert "compiled/model.pt" in manifest["files"] and "checkpoint/config.json" in manifest["files"]
