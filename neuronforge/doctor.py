"""`neuronforge doctor`: what this host can do (GPU, Neuron, AWS, disk, memory), each gap with a fix.

Every probe is a small function whose inputs (device folder, package versions, environment) can be
swapped in tests; nothing here contacts AWS or any network: credentials are located, not verified.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from neuronforge.assets.models import EMBEDDED_MODELS, embedded_model_dir
from neuronforge.core.devices import CUDA_INSTALL_FIX, cuda_problem, driver_cuda_version, gpu_present
from neuronforge.core.package_versions import package_versions
from neuronforge.core.presets import PRESETS, SENSITIVITY_BATCH, first_order_windows
from neuronforge.core.s3uri import is_s3
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import check_weights, header_shapes, read_config, validate_hf_folder
from neuronforge.neuron.host import neuron_devices
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, install_hint, neuron_sdk

Status = Literal["ok", "warn", "absent"]
NEURON_PACKAGES = ("neuronx-distributed-inference", "neuronx-distributed", "neuronx-cc", "torch-neuronx")
# Stage 1 keeps the bf16 source, writes a bf16 fake-quantized copy, and stage 2 adds compiled weights.
DISK_FACTOR = 3.0
# Peak host RAM of stage 1's default path, in the larger of its two phases (docs/benchmarks.md, "Host-memory fits"):
# - the sensitivity analysis holds the bf16 model and, for its backward pass, every decoder layer's fp32 input for
#   all calibration tokens, (layers + 1) x tokens x hidden x 4 bytes, plus one calibration batch's fp32 activations
#   and gradients through one layer, about 60 bytes per token of a batch (SENSITIVITY_BATCH windows) per unit of
#   hidden + intermediate width; on top of plain rounding's fit at the benchmark's 64 tokens (2.24 B/param + 0.59 GB,
#   `python benchmarks/bench_scale.py`). Measured at quantize's defaults (32 x 256 tokens, /usr/bin/time -v):
#   2.21 GB at 0.33e9 parameters (20 layers, hidden 1024, intermediate 2816) and 5.22 GB at 1.17e9 (22, 2048, 5632);
# - AutoRound holds the bf16 model with its embedding and the decoder block being tuned in fp32, and then its check
#   against RTN (pipeline/quantize/autoround_check.py) holds the bf16 model beside RTN's emulated model (1 B/param of
#   codes) and the bf16 reference's logits on the validation and test text (3 x (1024 + 512) tokens on the embedded
#   texts, 2 bytes per vocabulary entry each) plus one text's logits of the model scored and a window's fp32 softmax:
#   2.91 B/param + 1.56 GB at SmolLM2's 49152-token vocabulary (`--stages autoround --repeat 1`, 2.51 and 4.96 GB),
#   of which about 0.7 GB are those logits.
# Slopes rounded up, and 1 GB fixed in both for headroom: 2.77 and 5.26 GB for the two measured models.
SENSITIVITY_BYTES_PER_PARAM = 2.3
SENSITIVITY_BATCH_BYTES = 60  # per token of a batch, per unit of hidden + intermediate width
AUTOROUND_BYTES_PER_PARAM = 2.95
SCORED_LOGIT_BYTES = 16 << 10  # per vocabulary entry: the reference's logits, one text's, a window's fp32 softmax
BASELINE_BYTES = 1_000_000_000
CALIBRATION = PRESETS["gpu"]  # quantize's default nsamples and calib_seq_len
GIB = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def check_cuda(
    problem: str | None | Literal["probe"] = "probe", present: bool | None = None, driver_cuda: str | None = "probe"
) -> Check:
    """Can torch use a CUDA GPU here, and if the host has one it cannot use, why (core/devices.py: the same probe
    `--device` uses): a CPU-only torch build, no driver, or a driver older than the torch wheel's CUDA runtime."""
    import torch

    problem = cuda_problem() if problem == "probe" else problem
    present = gpu_present() if present is None else present
    if problem is None:
        names = [
            f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / GIB:.0f} GiB)"
            for i in range(torch.cuda.device_count())
        ]
        return Check("CUDA GPU", "ok", f"{', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    if not present:
        return Check(
            "CUDA GPU",
            "absent",
            f"no NVIDIA GPU on this host (stage 1 runs on CPU: fine for small models; {problem})",
            "for 7B+ run stage 1 on a GPU host (ml.g6e/g5, or EC2 g6e) with a CUDA build of torch (docs/gpu.md)",
        )
    driver = driver_cuda_version() if driver_cuda == "probe" else driver_cuda
    detail = f"this host has an NVIDIA GPU, but {problem}"
    fix = CUDA_INSTALL_FIX
    wanted = torch.version.cuda
    if driver and wanted and _version(driver) < _version(wanted):
        detail += f"; the driver supports CUDA up to {driver}, this torch needs CUDA {wanted}"
        fix = (
            f"upgrade the NVIDIA driver to one that supports CUDA {wanted}, or install the torch 2.13.0 build for "
            f"CUDA {driver} or lower from https://download.pytorch.org/whl/ (docs/gpu.md)"
        )
    return Check("CUDA GPU", "warn", detail + " (`--device auto` would run on the CPU)", fix)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def check_neuron(dev_root: Path = Path("/dev"), versions: dict[str, str] | None = None) -> Check:
    """Neuron devices and the SDK packages compile needs (PyPI holds only placeholders for them)."""
    devices = neuron_devices(dev_root)
    versions = versions if versions is not None else package_versions(NEURON_PACKAGES)
    installed = {name: v for name, v in versions.items() if v != "absent"}
    pins = neuron_sdk(DEFAULT_SDK).pins()
    mismatched = [
        f"{name} {v} (SDK {DEFAULT_SDK} pins {pins[name]})"
        for name, v in installed.items()
        if pins.get(name) and v != pins[name]
    ]
    packages = ", ".join(f"{n} {v}" for n, v in installed.items()) or "no Neuron SDK packages"
    where = f"{len(devices)} device(s) ({', '.join(devices)})" if devices else "no /dev/neuron* devices"
    detail = f"{where}; {packages}"
    if not devices:
        return Check(
            "Neuron",
            "absent",
            detail + " (compile is skipped; the run ends with a package ready for a Neuron compile job)",
            "to compile, run `neuronforge run --stages compile,package` on an "
            "inf2/trn1 host sharing the run directory (e.g. an s3:// --out)",
        )
    if "neuronx-distributed-inference" not in installed or mismatched:
        problem = f"; not the pinned versions: {', '.join(mismatched)}" if mismatched else ""
        return Check("Neuron", "warn", detail + problem, install_hint(DEFAULT_SDK))
    return Check("Neuron", "ok", detail)


def check_aws(env: dict[str, str] | None = None) -> list[Check]:
    """Credentials (located, not verified) and region, needed for s3:// paths and SageMaker jobs."""
    import boto3

    session = boto3.Session()
    credentials = session.get_credentials()
    env = env if env is not None else dict(os.environ)
    checks = []
    if credentials is None:
        checks.append(
            Check(
                "AWS credentials",
                "absent",
                "none found (needed only for s3:// paths and SageMaker)",
                "run `aws configure`, set AWS_PROFILE, or use an instance role",
            )
        )
    else:
        checks.append(Check("AWS credentials", "ok", f"found via {credentials.method} (not verified offline)"))
    region = session.region_name
    if region:
        checks.append(Check("AWS region", "ok", region))
    else:
        checks.append(
            Check(
                "AWS region",
                "warn",
                "not set",
                "export AWS_DEFAULT_REGION=us-east-1 "
                "(or `aws configure set region ...`); use the region of your bucket and inf2 capacity",
            )
        )
    if env.get("AWS_ENDPOINT_URL"):
        checks.append(
            Check(
                "AWS endpoint",
                "warn",
                f"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']} redirects every AWS call",
                "unset it unless you are testing against a local S3/SageMaker stand-in",
            )
        )
    return checks


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(where: Path, model_bytes: int | None) -> Check:
    """Free space where the run writes vs roughly DISK_FACTOR x the model's size."""
    free = shutil.disk_usage(_existing_ancestor(where)).free
    if model_bytes is None:
        return Check("Disk", "ok", f"{free / GIB:.1f} GiB free at {where} (model size unknown)")
    need = int(model_bytes * DISK_FACTOR)
    detail = f"{free / GIB:.1f} GiB free at {where}; a run needs about {need / GIB:.1f} GiB ({DISK_FACTOR:g} x model)"
    if free < need:
        return Check(
            "Disk",
            "warn",
            detail,
            f"free {(need - free) / GIB:.1f} GiB, or point --out / NEURONFORGE_CACHE at a larger volume",
        )
    return Check("Disk", "ok", detail)


@dataclass(frozen=True)
class ModelShape:
    """What stage 1's host memory depends on: the parameter count and a decoder layer's widths."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int  # the scored logits of AutoRound's check against RTN grow with it


def stage1_peak(
    shape: ModelShape, nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.calib_seq_len
) -> tuple[int, int, int]:
    """(peak, sensitivity phase, of which layer inputs) host bytes of `neuronforge quantize` calibrating on
    `nsamples` windows of `seqlen` tokens (see the constants above; the first-order pass scores at most
    `first_order_windows` of them)."""
    layer_inputs = (shape.layers + 1) * first_order_windows(nsamples, seqlen) * seqlen * shape.hidden * 4
    batch = min(nsamples, SENSITIVITY_BATCH) * seqlen * (shape.hidden + shape.intermediate)
    sensitivity = int(shape.params * SENSITIVITY_BYTES_PER_PARAM) + layer_inputs + batch * SENSITIVITY_BATCH_BYTES
    autoround = int(shape.params * AUTOROUND_BYTES_PER_PARAM) + shape.vocab * SCORED_LOGIT_BYTES
    return BASELINE_BYTES + max(sensitivity, autoround), BASELINE_BYTES + sensitivity, layer_inputs


def check_memory(
    shape: ModelShape | None,
    total: int | None = None,
    nsamples: int = CALIBRATION.nsamples,
    seqlen: int = CALIBRATION.calib_seq_len,
) -> Check:
    """Host RAM vs the measured peak of loading and quantizing a model of `shape` calibrating on `nsamples`
    windows of `seqlen` tokens (quantize's defaults unless the user asked for another budget)."""
    total = total if total is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    detail = f"{total / GIB:.1f} GiB RAM, {os.cpu_count()} CPU cores"
    if shape is None:
        return Check("Memory", "ok", detail)
    need, sensitivity, layer_inputs = stage1_peak(shape, nsamples, seqlen)
    in_sensitivity = sensitivity >= need
    where = (
        f"in the sensitivity analysis, {layer_inputs / GIB:.2f} GiB of it the layer inputs of "
        f"{CALIBRATION.nsamples} x {CALIBRATION.calib_seq_len} calibration tokens"
        if in_sensitivity
        else "while AutoRound tunes and is compared with RTN"
    )
    estimate = f"~{need / GIB:.1f} GiB at its peak, {where}"
    if total < need:
        return Check(
            "Memory",
            "warn",
            f"{detail}; quantizing this model needs {estimate}",
            "use a host with more memory"
            + (
                ", or fewer calibration tokens (--nsamples, --calib-seq-len)"
                if in_sensitivity
                else " (or a GPU host: AutoRound tunes its block there)"
            ),
        )
    return Check("Memory", "ok", f"{detail}; enough for this model ({estimate})")


def _model_path(model: str) -> Path:
    return embedded_model_dir(model) if model in EMBEDDED_MODELS else Path(model).expanduser()


def model_size(model: str) -> tuple[int | None, str]:
    """(bytes, note) of the model's weights when it is on this host; never downloads anything."""
    if is_s3(model):
        return None, f"{model} is remote; its size is checked when the run downloads it"
    path = _model_path(model)
    if path.exists() and not path.is_dir():
        return None, f"{model} is a file, not a model folder"
    if not path.is_dir():
        hint = f"run `neuronforge model fetch {model}`" if model in EMBEDDED_MODELS else "no such folder"
        return None, f"{model} not on this host yet ({hint})"
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return weights or folder_size(path), f"{model}: {(weights or folder_size(path)) / GIB:.2f} GiB of weights"


def check_model(model: str) -> tuple[Check | None, ModelShape | None]:
    """(a check of the folder as the run will check it, its shape) for a model on this host."""
    path = _model_path(model)
    if is_s3(model) or not path.exists():
        return None, None
    try:
        validate_hf_folder(path)
        check_weights(path)  # transformers' own view of config.json, as `run` checks it
    except NeuronforgeError as exc:
        return Check("Model", "warn", exc.what, exc.fix), None
    params = sum(math.prod(shape) for shape in header_shapes(path).values())
    config = read_config(path)
    detail = f"{config.get('model_type')}, {config.get('num_hidden_layers')} layers, {params / 1e9:.3f}e9 parameters"
    widths = (config.get(key) or 0 for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size"))
    shape = ModelShape(params, *(int(width) for width in widths))
    return Check("Model", "ok", detail), shape


def diagnose(
    model: str, where: Path, nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.calib_seq_len
) -> tuple[list[Check], str]:
    """All checks for running `model` with outputs under `where` at this calibration budget, plus the size note."""
    size, note = model_size(model)
    model_check, shape = check_model(model)
    memory = check_memory(shape, nsamples=nsamples, seqlen=seqlen)
    checks = [check_cuda(), check_neuron(), *check_aws(), check_disk(where, size), memory]
    return checks + ([model_check] if model_check else []), note


def capabilities(checks: list[Check]) -> list[str]:
    """One line per thing this host can do, derived from the checks."""
    by_name = {c.name: c for c in checks}
    gpu = by_name["CUDA GPU"].status == "ok"
    lines = [
        f"stage 1 (sensitivity + AutoRound): yes, on {'GPU' if gpu else 'CPU (small models)'}",
        "CPU emulation of Neuron numerics: yes",
    ]
    neuron = by_name["Neuron"].status
    lines.append(
        "stage 2 (NxD compile): "
        + {"ok": "yes", "warn": "not until the fix below", "absent": "no (no Neuron device)"}[neuron]
    )
    aws = by_name["AWS credentials"].status == "ok"
    lines.append(f"s3:// paths and SageMaker jobs: {'yes' if aws else 'no (no AWS credentials)'}")
    return lines


def as_json(checks: list[Check]) -> list[dict[str, str | None]]:
    return [asdict(check) for check in checks]
