"""The jobs' container commands, run locally: they must work with the real `neuronforge quantize/compile/package`.

Only container paths (/opt/ml/...) are mapped to local folders; entrypoints, scripts and flags are the ones
the SageMaker requests carry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.fakes import make_compiled
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.sagemaker.code import build_wheel, bundle_for
from neuronforge.sagemaker.packaging import package_model, verify_package
from neuronforge.sagemaker.requests import (
    QUANTIZE_SCRIPT,
    JobSettings,
    compile_job_request,
    compile_processing_request,
    quantize_job_request,
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the neuronforge under test, built the way the CLI ships it."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _job_env(request: dict, wheel: Path, target: Path, **extra: str) -> dict[str, str]:
    """The job's environment with container paths mapped: the wheel channel is `wheel`'s folder, and pip installs
    into `target` (PIP_TARGET), which comes first on PYTHONPATH, so the job runs the code it installed."""
    env = {**os.environ, **request["Environment"], **extra}
    env["NF_INSTALL"] = str(wheel.parent / Path(env["NF_INSTALL"]).name)
    standin = Path(__file__).resolve().parents[1] / "nxdi_standin"
    env |= {
        "PIP_TARGET": str(target),
        "PIP_NO_INDEX": "1",
        "PYTHONPATH": f"{target}{os.pathsep}{standin}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return env


def test_quantize_job_arguments_run_neuronforge_quantize(tmp_path: Path, tiny_llama_dir: Path) -> None:
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        options={"iters": 1, "nsamples": 2, "calib_seq_len": 32, "autoround": False},
        install="neuronforge==0.1.0",
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


def test_job_script_refuses_a_wheel_whose_sha256_differs(tmp_path: Path, wheel: Path) -> None:
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        code=bundle_for(wheel, "s3://nf-b/o/"),
    )
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"][2] == QUANTIZE_SCRIPT
    env = _job_env(request, wheel, tmp_path / "site", NF_SHA256="0" * 64)
    script = request["AlgorithmSpecification"]["ContainerEntrypoint"]
    result = subprocess.run([*script, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and not (tmp_path / "site").exists()  # nothing installed, nothing ran


def test_compile_job_installs_the_shipped_wheel_then_compiles_and_packages(
    tmp_path: Path, stage1_llama_dir: Path, wheel: Path
) -> None:
    """The compile job's entrypoint script + arguments, with the in-repo NxDI stand-in playing NxDI: it checks the
    shipped wheel's sha256, installs it (--no-deps, into a scratch PIP_TARGET) and runs that neuronforge."""
    request = compile_job_request(
        JobSettings(name="nf-c", role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.2xlarge"),
        checkpoint_s3="s3://nf-b/c/",
        output_s3="s3://nf-b/o/",
        tp_degree=2,
        seq_len=128,
        code=bundle_for(wheel, "s3://nf-b/o/"),
    )
    spec = request["AlgorithmSpecification"]
    channel = "/opt/ml/input/data/checkpoint"
    args = [str(stage1_llama_dir) if a == channel else a for a in spec["ContainerArguments"]]
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "neuron0").touch()  # a trn1.2xlarge: one Trainium chip, 2 NeuronCores
    env = _job_env(
        request,
        wheel,
        tmp_path / "site",
        NF_CKPT=str(stage1_llama_dir),
        NF_OUT=str(tmp_path / "package"),
        TMPDIR=str(tmp_path),
        NEURONFORGE_DEV_ROOT=str(tmp_path / "dev"),
    )
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "site" / "neuronforge" / "sagemaker" / "code.py").is_file()  # the shipped code was installed
    manifest = verify_package(tmp_path / "package")
    assert manifest["serving"]["tp_degree"] == 2 and manifest["serving"]["max_model_len"] == 128
    assert "compiled/model.pt" in manifest["files"] and "checkpoint/config.json" in manifest["files"]


def test_processing_compile_fills_the_output_dir_sagemaker_precreated(
    tmp_path: Path, stage1_llama_dir: Path, wheel: Path
) -> None:
    """A CPU processing host has no NeuronCores (--compile-only) and SageMaker creates the output LocalPath first."""
    request = compile_processing_request(
        JobSettings(name="nf-cpu", role_arn=ROLE, region="us-east-1", instance_type="ml.r7i.8xlarge"),
        checkpoint_s3="s3://nf-b/c/",
        output_s3="s3://nf-b/o/",
        tp_degree=2,
        seq_len=128,
        code=bundle_for(wheel, "s3://nf-b/o/"),
    )
    spec = request["AppSpecification"]
    assert "--compile-only" in spec["ContainerArguments"]
    channel = "/opt/ml/processing/input/checkpoint"
    args = [str(stage1_llama_dir) if a == channel else a for a in spec["ContainerArguments"]]
    (tmp_path / "output" / "package").mkdir(parents=True)  # what SageMaker does before the entrypoint runs
    (tmp_path / "dev").mkdir()  # no /dev/neuron*: the CPU host
    env = _job_env(
        request,
        wheel,
        tmp_path / "site",
        NF_CKPT=str(stage1_llama_dir),
        NF_OUT=str(tmp_path / "output" / "package"),
        TMPDIR=str(tmp_path),
        NEURONFORGE_DEV_ROOT=str(tmp_path / "dev"),
    )
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert verify_package(tmp_path / "output" / "package")["serving"]["tp_degree"] == 2
