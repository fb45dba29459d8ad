"""The jobs' container commands, run locally: they must work with the real `neuronforge quantize/compile/package`.

Only container paths (/opt/ml/...) are mapped to local folders; entrypoints, scripts and flags are the ones
the SageMaker requests carry. The container is a Python environment playing the image (`image_env`): the
project's dependencies, plus (like the Neuron image, serving/Dockerfile) a neuronforge of the SAME version
but an older build already installed, which pip keeps unless told otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from testkit.fakes import make_compiled
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.code import build_wheel, bundle_for, label_version
from neuronforge.sagemaker.job import shipped_code, wheel_version
from neuronforge.sagemaker.packaging import package_model, verify_package
from neuronforge.sagemaker.requests import (
    JOB_SCRIPT,
    JobSettings,
    compile_job_request,
    compile_processing_request,
    quantize_job_request,
)

SOURCE = Path(__file__).resolve().parents[2]
IMAGE_BUILD = "image_build.py"  # a module only the image's older build has


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the neuronforge under test, built the way the CLI ships it."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def image_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's neuronforge: the same source and version (plain `pip wheel`, as the Dockerfile's install of
    /opt/neuronforge), plus one extra module, so the test can tell which build a job imports."""
    root = tmp_path_factory.mktemp("image-build")
    src = root / "src"
    src.mkdir()
    shutil.copy2(SOURCE / "pyproject.toml", src / "pyproject.toml")
    shutil.copy2(SOURCE / "README.md", src / "README.md")
    shutil.copytree(SOURCE / "neuronforge", src / "neuronforge", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "neuronforge" / IMAGE_BUILD).write_text("BUILT_INTO_THE_IMAGE = True\n")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root)]
    subprocess.run([*command, str(src)], check=True, capture_output=True, timeout=300)
    return next(root.glob("neuronforge-*.whl"))


@pytest.fixture
def image_env(tmp_path: Path, image_build: Path) -> Path:
    """A venv playing the job's image: this venv's packages (minus neuronforge) through a .pth, `pip` on PATH,
    and the image's own neuronforge build installed. Returns the venv folder."""
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("neuronforge", "__editable__")):
            (deps / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(f"{deps}\n")
    pip = venv / "bin" / "pip"
    pip.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
    pip.chmod(0o755)
    subprocess.run([str(pip), "install", "-q", "--no-deps", "--no-index", str(image_build)], check=True, timeout=120)
    assert (site / "neuronforge" / IMAGE_BUILD).is_file()
    return venv


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _job_env(request: dict, wheel: Path, venv: Path, **extra: str) -> dict[str, str]:
    """The job's environment with container paths mapped: the wheel channel is `wheel`'s folder, and `python`,
    `pip` and `neuronforge` are the image venv's."""
    env = {**os.environ, **request["Environment"], **extra}
    env["NF_INSTALL"] = str(wheel.parent / Path(env["NF_INSTALL"]).name)
    env |= {
        "PIP_NO_INDEX": "1",
        "PYTHONPATH": str(SOURCE / "tests" / "nxdi_standin"),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
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


def test_job_script_refuses_a_wheel_whose_sha256_differs(tmp_path: Path, wheel: Path, image_env: Path) -> None:
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        code=bundle_for(wheel, "s3://nf-b/o/"),
    )
    script = request["AlgorithmSpecification"]["ContainerEntrypoint"]
    assert script[2] == JOB_SCRIPT
    env = _job_env(request, wheel, image_env, NF_SHA256="0" * 64)
    result = subprocess.run([*script, "quantize", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "neuronforge job" not in result.stdout  # nothing installed, nothing ran
    assert (_site(image_env) / "neuronforge" / IMAGE_BUILD).is_file()


def test_the_shipped_wheel_version_carries_the_source_hash(tmp_path: Path, wheel: Path) -> None:
    """Changed code gets a version of its own, so no installed neuronforge of the same version can stand in for it."""
    assert wheel_version(wheel.name).startswith("0.1.0+src")
    tree = tmp_path / "src"
    (tree / "neuronforge").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "neuronforge"\nversion = "0.1.0"\n')
    (tree / "neuronforge" / "a.py").write_text("A = 1\n")
    before = label_version(tree)
    (tree / "pyproject.toml").write_text('[project]\nname = "neuronforge"\nversion = "0.1.0"\n')
    (tree / "neuronforge" / "a.py").write_text("A = 2\n")
    after = label_version(tree)
    assert (
        before != after
        and before.startswith("0.1.0+src")
        and f'version = "{after}"' in (tree / "pyproject.toml").read_text()
    )


def test_the_job_refuses_to_run_a_neuronforge_that_is_not_the_shipped_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process imports the checkout's neuronforge 0.1.0: a job that shipped another build must stop."""
    monkeypatch.setenv("NF_INSTALL", "/opt/ml/input/data/wheel/neuronforge-0.1.0+src0123456789ab-py3-none-any.whl")
    monkeypatch.setenv("NF_SHA256", "ab" * 32)
    with pytest.raises(NeuronforgeError, match="not the shipped wheel 0.1.0\\+src0123456789ab"):
        shipped_code()
    monkeypatch.delenv("NF_SHA256")
    assert shipped_code()["distribution"]  # --install SPEC: reported, nothing to compare


def test_quantize_job_without_a_gpu_fails_at_once(tmp_path: Path, wheel: Path, image_env: Path) -> None:
    """torch sees no CUDA device here (CPU torch): the GPU job must stop with the reason, not quantize on the CPU."""
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        code=bundle_for(wheel, "s3://nf-b/o/"),
    )
    spec = request["AlgorithmSpecification"]
    out = tmp_path / "model" / "checkpoint"
    args = [str(out) if a == "/opt/ml/model/checkpoint" else a for a in spec["ContainerArguments"]]
    env = _job_env(request, wheel, image_env)
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: no CUDA device visible to torch" in result.stderr and not out.exists()
    assert not (_site(image_env) / "neuronforge" / IMAGE_BUILD).exists()  # the shipped wheel replaced the image's


def test_compile_job_installs_the_shipped_wheel_over_the_images_own_then_compiles_and_packages(
    tmp_path: Path, stage1_llama_dir: Path, wheel: Path, image_env: Path
) -> None:
    """The compile job's entrypoint script + arguments, with the in-repo NxDI stand-in playing NxDI, in an image
    that already has neuronforge 0.1.0: it checks the shipped wheel's sha256, replaces the image's neuronforge
    with it, proves that is what it imports (job.json), and compiles and packages with it."""
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
        image_env,
        NF_CKPT=str(stage1_llama_dir),
        NF_OUT=str(tmp_path / "model" / "package"),
        TMPDIR=str(tmp_path),
        NEURONFORGE_DEV_ROOT=str(tmp_path / "dev"),
    )
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    site = _site(image_env)
    assert not (site / "neuronforge" / IMAGE_BUILD).exists()  # the image's build is gone, the shipped one runs
    report = json.loads((tmp_path / "model" / "job.json").read_text())
    assert report["neuronforge"]["distribution"] == wheel_version(wheel.name)
    assert report["neuronforge"]["imported_from"] == str((site / "neuronforge").resolve())
    assert report["neuronforge"]["wheel_sha256"] == request["Environment"]["NF_SHA256"]
    assert report["device"] == "neuron"
    manifest = verify_package(tmp_path / "model" / "package")
    assert manifest["serving"]["tp_degree"] == 2 and manifest["serving"]["max_model_len"] == 128
    assert "compiled/model.pt" in manifest["files"] and "checkpoint/config.json" in manifest["files"]


def test_processing_compile_fills_the_output_dir_sagemaker_precreated(
    tmp_path: Path, stage1_llama_dir: Path, wheel: Path, image_env: Path
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
        image_env,
        NF_CKPT=str(stage1_llama_dir),
        NF_OUT=str(tmp_path / "output" / "package"),
        TMPDIR=str(tmp_path),
        NEURONFORGE_DEV_ROOT=str(tmp_path / "dev"),
    )
    result = subprocess.run([*spec["ContainerEntrypoint"], *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (_site(image_env) / "neuronforge" / IMAGE_BUILD).exists()
    assert verify_package(tmp_path / "output" / "package")["serving"]["tp_degree"] == 2
