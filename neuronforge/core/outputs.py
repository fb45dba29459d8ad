"""Where a command may write, checked before any work starts.

neuronforge only ever removes what it created itself. These checks make that hold by construction for
everything a user points `--out` at: an output may not be, contain or sit inside one of the command's
inputs; it must be a folder we can write; a standalone command never writes inside a run directory (that
belongs to `neuronforge run`, which replaces its stage folders); and `run` only adopts a folder that is
new, empty, or already a run directory (see docs/file-safety.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from neuronforge.core.s3uri import SCHEME, is_s3
from neuronforge.errors import NeuronforgeError

RUN_MANIFEST = "manifest.json"  # what makes a folder a run directory (with the run's keys in it)
RUN_LOCK = ".lock"


def local_path(path: str | Path) -> Path:
    """An absolute path, `~` expanded and relative to the current directory (symlinks resolved)."""
    return Path(path).expanduser().resolve()


def _parts(location: str | Path) -> tuple[str, ...]:
    """A location as comparable parts: ('s3:', bucket, *key parts) or the parts of its resolved path."""
    if is_s3(location):
        return ("s3:", *[part for part in str(location)[len(SCHEME) :].split("/") if part])
    return local_path(location).parts


def is_run_dir(folder: Path) -> bool:
    """A folder `neuronforge run` made: its manifest.json is a run manifest (the lock marks a damaged one)."""
    manifest = Path(folder) / RUN_MANIFEST
    if not manifest.is_file():
        return False
    if (Path(folder) / RUN_LOCK).exists():
        return True
    try:
        payload = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and {"schema_version", "stages"} <= payload.keys()


def enclosing_run_dir(path: Path) -> Path | None:
    """The run directory that `path` is (or sits inside), if any."""
    for folder in (path, *path.parents):
        if is_run_dir(folder):
            return folder
    return None


def check_apart(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str = "--out") -> None:
    """Refuse an output that is, contains, or sits inside one of the inputs (`{"--model": path, ...}`)."""
    where = _parts(out)
    for name, value in inputs.items():
        if value is None:
            continue
        given = _parts(value)
        if given == where:
            what = f"{flag} {out} is the same location as {name} {value}"
        elif given[: len(where)] == where:
            what = f"{flag} {out} contains {name} {value}"
        elif where[: len(given)] == given:
            what = f"{flag} {out} is inside {name} {value}"
        else:
            continue
        raise NeuronforgeError(
            f"{what}: writing there could replace or delete your input",
            f"choose a {flag} outside {name} (for example a new folder next to it)",
        )


def check_writable(path: Path, flag: str = "--out") -> None:
    """`path` is (or can be created as) a folder this process may write in."""
    if path.exists() and not path.is_dir():
        raise NeuronforgeError(f"{flag} {path} is a file, not a folder", f"choose a folder path for {flag}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NeuronforgeError(f"{flag} {path} cannot be created: {existing} is a file", f"choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NeuronforgeError(
            f"{flag} {path} cannot be written: no write permission in {existing} (or a read-only file system)",
            f"choose a writable {flag}, or fix the permissions",
        )


def check_output(out: Path, inputs: Mapping[str, str | Path | None], flag: str = "--out") -> Path:
    """All checks for a standalone command's output folder; returns it as an absolute path."""
    out = local_path(out)
    check_apart(out, inputs, flag)
    run_dir = enclosing_run_dir(out)
    if run_dir is not None:
        raise NeuronforgeError(
            f"{flag} {out} is inside the run directory {run_dir}, whose folders `neuronforge run` manages",
            f"choose a {flag} outside {run_dir}",
        )
    check_writable(out, flag)
    return out


def check_run_dir(out: Path, inputs: Mapping[str, str | Path | None]) -> Path:
    """`run --out`: new, empty, or already a run directory; never inside another one or one of the inputs."""
    out = local_path(out)
    check_apart(out, inputs)
    outer = enclosing_run_dir(out.parent)
    if outer is not None:
        raise NeuronforgeError(f"--out {out} is inside the run directory {outer}", f"choose an --out outside {outer}")
    check_writable(out)
    if out.is_dir() and not is_run_dir(out) and any(p.name != RUN_LOCK for p in out.iterdir()):
        raise NeuronforgeError(
            f"--out {out} already holds files and is not a neuronforge run directory (it has no run manifest.json)",
            "choose a new or empty folder for --out; neuronforge never writes into a folder it did not create",
        )
    return out
