"""What runs inside a SageMaker job after its bash entrypoint installed neuronforge: `python -m neuronforge.sagemaker.job`.

It first proves that the neuronforge it imports is the one the job shipped. The Neuron image has a neuronforge
baked in at image-build time, and pip keeps an installed distribution of the same version, so the job would
otherwise run stale code with exit code 0. Then it runs the stage:
`quantize ARGS` (a GPU job: no GPU fails at once, the device goes into the report) or
`compile ARGS` (`neuronforge compile` into $TMPDIR/nfc, then `neuronforge package` into $NF_OUT).
The report (`job.json` next to the stage's output folder, and in the log) says which code ran on which device.
This module ships in the wheel, so an image whose neuronforge predates it fails here with "No module named".
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import neuronforge
from neuronforge.errors import NeuronforgeError


def wheel_version(filename: str) -> str:
    """'neuronforge-0.1.0+src1a2b-py3-none-any.whl' -> '0.1.0+src1a2b' (the wheel file name spec)."""
    parts = filename.split("-")
    if len(parts) < 5 or parts[0] != "neuronforge" or not filename.endswith(".whl"):
        raise NeuronforgeError(f"{filename} is not a neuronforge wheel file name", "ship a neuronforge-*.whl")
    return parts[1]


def shipped_code() -> dict[str, str]:
    """The imported neuronforge's distribution version and folder; with a shipped wheel ($NF_SHA256 set), an error
    unless that is exactly the wheel's version and the imported package is the one that distribution installed."""
    dist = importlib.metadata.distribution("neuronforge")
    imported = Path(neuronforge.__file__).resolve().parent
    found = {"distribution": dist.version, "imported_from": str(imported), "install": os.environ.get("NF_INSTALL", "")}
    digest = os.environ.get("NF_SHA256")
    if not digest:  # --install SPEC: a pip requirement, nothing to compare with
        return found
    expected = wheel_version(Path(found["install"]).name)
    installed_here = Path(str(dist.locate_file("neuronforge"))).resolve()
    if dist.version != expected or installed_here != imported:
        raise NeuronforgeError(
            f"the job imports neuronforge {dist.version} from {imported}, not the shipped wheel {expected} "
            f"(sha256 {digest}, installed at {installed_here})",
            "the image's own neuronforge shadows the shipped one: install the wheel with "
            "pip --force-reinstall --no-deps, and rebuild the wheel (its version carries the source hash)",
        )
    return found | {"wheel_sha256": digest}


def cuda_device() -> dict[str, str]:
    """The GPU a quantize job runs on; none visible is an error, never a silent CPU run of AutoRound."""
    import torch

    if not torch.cuda.is_available():
        raise NeuronforgeError(
            f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda}) in this GPU job",
            "the host's NVIDIA driver is older than the image's CUDA needs, or the instance has no GPU: use a "
            "GPU --instance-type, or --image with a DLC whose CUDA matches the host driver",
        )
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}


def _report(report: dict[str, Any], folder: Path) -> None:
    """Print the report (CloudWatch log) and write job.json next to the stage's output folder."""
    text = json.dumps(report, indent=2, sort_keys=True)
    print(f"neuronforge job: {text}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(text + "\n")


def _value(args: list[str], flag: str) -> str:
    if flag not in args or args.index(flag) + 1 >= len(args):
        raise NeuronforgeError(f"the job's arguments lack {flag}", "this is a neuronforge bug; please report it")
    return args[args.index(flag) + 1]


def run(stage: str, args: list[str]) -> int:
    """Check the code, then run the stage; the return code is the job's."""
    report: dict[str, Any] = {"stage": stage, "neuronforge": shipped_code()}
    if stage == "quantize":
        report |= cuda_device()
        _report(report, Path(_value(args, "--out")).parent)
        cuda = [] if "--device" in args else ["--device", "cuda"]  # never a silent CPU run of AutoRound
        return subprocess.run(["neuronforge", "quantize", *args, *cuda]).returncode
    if stage == "compile":
        package = Path(os.environ["NF_OUT"])
        device = "cpu (--compile-only cross-compile)" if "--compile-only" in args else "neuron"
        _report(report | {"device": device}, package.parent)
        compiled = Path(os.environ.get("TMPDIR", "/tmp")) / "nfc"  # TMPDIR: the job's storage volume (NEW-6)
        compiled.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["neuronforge", "compile", *args, "--out", str(compiled)])
        if done.returncode:
            return done.returncode
        command = ["package", str(package), "--compiled", str(compiled), "--checkpoint", os.environ["NF_CKPT"]]
        return subprocess.run(["neuronforge", *command]).returncode
    raise NeuronforgeError(f"unknown job stage '{stage}'", "this is a neuronforge bug; please report it")


def main(argv: list[str]) -> int:
    try:
        return run(argv[0] if argv else "", argv[1:])
    except NeuronforgeError as exc:
        print(f"error: {exc.what}\nfix: {exc.fix}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
