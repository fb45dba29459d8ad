"""Ship the neuronforge the user is running into a job: a wheel built from its source, uploaded next to the inputs.

There is no neuronforge release on any package index, so a job that ran `pip install neuronforge==<version>`
would die at its first command. Instead the running source tree is built into a wheel (in a temporary copy, so
the checkout is never written to), uploaded content-addressed to `<output-s3>/code/<sha256>/`, mounted as the
job's `wheel` channel and installed from there after a sha256 check. The hash is in the job's environment and tags.
The wheel's version carries a hash of the source (`0.1.0+src<12 hex>`), so changed code never shares a version
with the neuronforge baked into an image, and the job (job.py) can tell which of the two it imports.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neuronforge.core import s3uri
from neuronforge.core.aws import call
from neuronforge.core.hashing import sha256_file
from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    from botocore.client import BaseClient

CHANNEL = "wheel"  # "code" and "sm_drivers" are the SDK's own channel names
CHANNEL_DIR = f"/opt/ml/input/data/{CHANNEL}"
PROCESSING_DIR = "/opt/ml/processing/input/wheel"


@dataclass(frozen=True)
class CodeBundle:
    """A neuronforge wheel in S3: the prefix holding only it, its file name and its sha256."""

    s3_prefix: str
    filename: str
    sha256: str

    @property
    def s3_uri(self) -> str:
        return self.s3_prefix + self.filename


def source_tree() -> Path:
    """The checkout this neuronforge runs from (editable install or PYTHONPATH), or an error saying what to pass."""
    root = Path(__file__).resolve().parents[2]  # neuronforge/sagemaker/code.py -> the checkout
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "neuronforge"' not in pyproject.read_text():
        raise NeuronforgeError(
            f"neuronforge runs from {root}, which is not a source checkout, so no wheel can be built from it",
            "pass --wheel PATH (a neuronforge wheel) or --install SPEC (a pip requirement the job can resolve)",
        )
    return root


def source_digest(tree: Path) -> str:
    """sha256 over every file's relative path and bytes under `tree`, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def label_version(copy: Path) -> str:
    """Give the copy's pyproject a local version label from its source hash ('0.1.0' -> '0.1.0+src1a2b3c4d5e6f');
    one alphanumeric segment, so PEP 440 normalisation (int-valued segments) cannot change it."""
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    found = re.search(r'^version = "([^"+]+)"$', text, flags=re.MULTILINE)
    if not found:
        raise NeuronforgeError(f"{pyproject} has no static version line", "pass --wheel PATH with a wheel you built")
    version = f"{found.group(1)}+src{source_digest(copy)[:12]}"
    pyproject.write_text(text[: found.start(1)] + version + text[found.end(1) :])
    return version


def build_wheel(dest: Path, source: Path | None = None) -> Path:
    """`pip wheel --no-deps` of a temporary copy of the source (setuptools would write build/ into the checkout),
    versioned by its content (label_version)."""
    source = source or source_tree()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-wheel-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copy2(source / name, copy / name)
        shutil.copytree(source / "neuronforge", copy / "neuronforge", ignore=shutil.ignore_patterns("__pycache__"))
        label_version(copy)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp, str(copy)]
        if _has_setuptools():  # build offline with the setuptools already here; else pip fetches it
            command.insert(4, "--no-build-isolation")
        # A fixed SOURCE_DATE_EPOCH makes the zip reproducible: the same source gives the same sha256 (and S3 key).
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        built = sorted(Path(tmp).glob("neuronforge-*.whl"))
        if result.returncode != 0 or not built:
            raise NeuronforgeError(
                f"building the neuronforge wheel failed: {(result.stderr or result.stdout).strip()[-500:]}",
                "pass --wheel PATH with a wheel you built (python -m pip wheel --no-deps .)",
            )
        target = dest / built[0].name
        shutil.copy2(built[0], target)
    return target


def _has_setuptools() -> bool:
    return importlib.util.find_spec("setuptools") is not None


def bundle_for(wheel: Path, output_s3: str) -> CodeBundle:
    """Where `wheel` goes: `<output-s3>/code/<sha256>/<file>` (content-addressed, so re-runs reuse it)."""
    wheel = Path(wheel)
    if not wheel.is_file() or not wheel.name.startswith("neuronforge-") or wheel.suffix != ".whl":
        raise NeuronforgeError(f"{wheel} is not a neuronforge wheel file", "pass a neuronforge-<version>-*.whl")
    digest = sha256_file(wheel)
    return CodeBundle(s3uri.join(output_s3, "code", digest) + "/", wheel.name, digest)


def upload(wheel: Path, bundle: CodeBundle, s3: BaseClient) -> None:
    """Upload the wheel unless that exact content is already there; S3 verifies the SHA-256 on arrival."""
    bucket, key = s3uri.split(bundle.s3_uri)
    fix = f"check that bucket {bucket} exists and the credentials may write to it"
    checksum = base64.b64encode(bytes.fromhex(bundle.sha256)).decode()
    listing = call(s3.list_objects_v2, Bucket=bucket, Prefix=key, MaxKeys=1, fix=fix)
    if listing.get("KeyCount"):
        return
    with open(wheel, "rb") as body:
        call(s3.put_object, Bucket=bucket, Key=key, Body=body, ChecksumSHA256=checksum, fix=fix)


@contextmanager
def prepared(wheel: Path | None, output_s3: str) -> Iterator[tuple[Path, CodeBundle]]:
    """The wheel to ship (`wheel`, or one built from the running source) and its bundle; nothing is uploaded yet."""
    with tempfile.TemporaryDirectory(prefix="nf-wheel-out-") as tmp:
        path = Path(wheel) if wheel else build_wheel(Path(tmp))
        yield path, bundle_for(path, output_s3)
