"""Where a command may write, checked before any work starts.

neuronforge only ever removes what it created itself. These checks make that hold by construction for
everything a user points `--out` at: an output may not be, contain or sit inside one of the command's
inputs; it must be a folder we can write; a standalone command never writes inside a run directory (that
belongs to `neuronforge run`, which replaces its stage folders); and `run` only adopts a folder that is
new, empty, or already a run directory (see docs/file-safety.md).

Every other command that writes a folder (quantize, quantize-nxd, neuron-config, compile, package) goes through
`output_dir`: the folder must be new, empty, or one neuronforge wrote (it carries `OUTPUT_MARKER`, which lists
every file written), and `--overwrite` replaces such a folder only while it holds nothing but those files.
A file the user put there is never deleted: the command refuses and names it (docs/output-contract.md).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from neuronforge.core.atomic import (
    atomic_dir,
    atomic_write_json,
    disk_full_error,
    is_disk_full,
    is_leftover_name,
    new_partial_dir,
    remove_leftovers,
    tree_bytes,
)
from neuronforge.core.s3uri import SCHEME, is_s3
from neuronforge.errors import NeuronforgeError, os_error

RUN_MANIFEST = "manifest.json"  # what makes a folder a run directory (with the run's keys in it)
RUN_LOCK = ".lock"
OUTPUT_MARKER = ".neuronforge-output.json"  # in every folder `output_dir` wrote: the files it wrote


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


@contextmanager
def os_errors_named(out: str | Path, flag: str) -> Iterator[None]:
    """An OSError from the checks of output `out` (a name too long, a deleted current directory, ...) as one error
    naming `flag` and the path as given (`errors.os_error`)."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, out, flag) from None


def check_no_dangling_link(out: str | Path, flag: str = "--out") -> None:
    """`out`, or a folder above it, is not a symbolic link to nothing: creating the output would fail with a
    misleading "File exists" after the inputs were checked (report O07), or create the link's target."""
    path = Path(os.path.abspath(Path(out).expanduser()))
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():
            target = os.readlink(part)
            raise NeuronforgeError(
                f"{flag} {out}: {part} is a dangling symbolic link (to {target}, which does not exist)",
                f"remove the link {part} or create {target}, or choose another {flag}",
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


def check_output(
    out: Path, inputs: Mapping[str, str | Path | None], flag: str = "--out", *, overwrite: bool = False
) -> Path:
    """All checks for a standalone command's output folder; returns it as an absolute path."""
    with os_errors_named(out, flag):
        check_no_dangling_link(out, flag)
        out = local_path(out)
        check_apart(out, inputs, flag)
        run_dir = enclosing_run_dir(out)
        if run_dir is not None:
            raise NeuronforgeError(
                f"{flag} {out} is inside the run directory {run_dir}, whose folders `neuronforge run` manages",
                f"choose a {flag} outside {run_dir}",
            )
        check_writable(out, flag)
        check_replaceable(out, overwrite=overwrite, flag=flag)
    return out


def _files_under(folder: Path) -> set[str]:
    """Every file (and link) below `folder`, as relative POSIX paths; left out: the marker, and the temp folders
    and files of a killed neuronforge writer (`core.atomic`'s pid-tagged names, which the next writer removes)."""
    found = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_leftover_name(d)]
        for name in [*files, *(d for d in dirs if (Path(root) / d).is_symlink())]:
            if not is_leftover_name(name):
                found.add((Path(root) / name).relative_to(folder).as_posix())
    found.discard(OUTPUT_MARKER)
    return found


def written_files(folder: Path) -> set[str] | None:
    """The files neuronforge recorded writing into `folder`; None when it carries no (readable) marker."""
    try:
        payload = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    files = payload.get("files") if isinstance(payload, dict) else None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def check_replaceable(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """`out` is new or empty, or a folder neuronforge wrote that holds only its files and `overwrite` is given."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise NeuronforgeError(f"{flag} {out} is a file, not a folder", f"choose a folder path for {flag}")
    present = _files_under(out)
    if not present:  # empty, or only empty folders and a killed writer's temp files
        return
    owned = written_files(out)
    if owned is None:
        raise NeuronforgeError(
            f"{flag} {out} already holds files neuronforge did not write ({', '.join(sorted(present)[:3])}); it never "
            "replaces or deletes them",
            f"choose a new or empty folder for {flag}",
        )
    foreign = sorted(present - owned)
    if foreign:
        raise NeuronforgeError(
            f"{flag} {out} holds files neuronforge did not write ({', '.join(foreign[:3])}): replacing the folder "
            "would delete them",
            f"move them out of {out}" + (f", or choose another {flag}" if flag.startswith("--") else ""),
        )
    if not overwrite:
        raise NeuronforgeError(
            f"{flag} {out} already exists (an earlier neuronforge output)",
            f"pass --overwrite to replace it, or choose another {flag}",
        )


def mark_output(folder: Path) -> None:
    """Record every file now in `folder` as written by neuronforge (`output_dir` does this for its folder;
    `evaluate` after each step it adds to the folder it re-uses as a cache)."""
    atomic_write_json(folder / OUTPUT_MARKER, {"files": sorted(_files_under(folder))})


@contextmanager
def output_dir(out: Path, *, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temp folder that becomes `out` (with its marker) only if the block succeeds: the one way a
    command writes its output folder. `out` is checked again here (`check_replaceable`), so the Python API
    gets the same contract as the CLI. An existing empty folder is filled in place (it may be a mount point)."""
    out = Path(out)
    check_replaceable(out, overwrite=overwrite, flag=flag)
    if not (out.is_dir() and not any(out.iterdir())):
        with atomic_dir(out, overwrite=True) as tmp:
            yield tmp
            mark_output(tmp)
        return
    remove_leftovers(out.parent, out.name)
    tmp = new_partial_dir(out)
    try:
        yield tmp
        mark_output(tmp)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == OUTPUT_MARKER):  # the marker last
            shutil.move(entry, out / entry.name)
        tmp.rmdir()
    except BaseException as exc:
        written = tree_bytes(tmp) + tree_bytes(out) if is_disk_full(exc) else 0
        shutil.rmtree(tmp, ignore_errors=True)
        for entry in out.iterdir():  # it was empty: whatever is there now, this block moved in
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if is_disk_full(exc):
            raise disk_full_error(out, written) from None
        raise


def check_run_dir(out: Path, inputs: Mapping[str, str | Path | None]) -> Path:
    """`run --out`: new, empty, or already a run directory; never inside another one or one of the inputs."""
    with os_errors_named(out, "--out"):
        check_no_dangling_link(out)
        out = local_path(out)
        check_apart(out, inputs)
        outer = enclosing_run_dir(out.parent)
        if outer is not None:
            raise NeuronforgeError(
                f"--out {out} is inside the run directory {outer}", f"choose an --out outside {outer}"
            )
        check_writable(out)
        if out.is_dir() and not is_run_dir(out) and any(p.name != RUN_LOCK for p in out.iterdir()):
            raise NeuronforgeError(
                f"--out {out} already holds files and is not a neuronforge run directory (it has no run manifest.json)",
                "choose a new or empty folder for --out; neuronforge never writes into a folder it did not create",
            )
    return out
