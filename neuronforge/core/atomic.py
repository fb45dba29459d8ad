"""Write-then-rename helpers: a killed process never leaves a half-written artifact behind.

Temp names carry the writer's pid (`.<name>.partial-<pid>-<hex>`, `.<name>.old-<pid>-<hex>`), so the next
writer of the same target removes what a killed one left, and only that: a name of exactly this shape
whose process is gone. New folders and files get the usual permissions (0777/0666 less the umask), not
the private 0700/0600 of `tempfile.mkdtemp`/`mkstemp`, so a run directory or cache one user makes is
readable by the others the umask allows.

A full disk (ENOSPC, also as the text of safetensors' own error, which is no OSError) while a block writes
becomes one NeuronforgeError naming the target, what had been written and what is free; the temp output is
removed first, so the same command works once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuronforge.errors import NeuronforgeError, os_error

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _temp_name(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_leftover_name(name: str) -> bool:
    """A temp name of this module's (`.<name>.partial-<pid>-<hex>` or `.old-`): never a user's file."""
    return _LEFTOVER.match(name) is not None


def remove_leftovers(folder: Path, name: str | None = None) -> list[Path]:
    """Remove temp folders/files that a killed writer left in `folder` (for target `name`, or any)."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        match = _LEFTOVER.match(path.name)
        if match is None or (name is not None and match["name"] != name) or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, as an OSError or as the message of a library's own error (safetensors: `os error 28`)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (or of the file), links not followed."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def disk_full_error(target: Path, at_least: int) -> NeuronforgeError:
    """The error for a disk that filled while `target` was written (`at_least` bytes: what had been written)."""
    existing = Path(target).parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    return NeuronforgeError(
        f"the disk holding {target} is full: writing it needs more than {_format_bytes(at_least)}, and "
        f"{_format_bytes(free)} is free (the partial output was removed)",
        "free space on that disk (or choose an output on another one) and run the same command again",
    )


def new_partial_dir(final: Path) -> Path:
    """A new empty temp folder next to `final`, named so that `remove_leftovers` can clean it after a kill."""
    while True:
        tmp = _temp_name(final, "partial")
        try:
            tmp.mkdir()  # mode 0o777 less the umask
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to `final`; rename it into place only if the block succeeds.

    `overwrite` replaces an existing `final`; callers decide whether `final` is theirs to replace.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(final.parent, final.name)
        tmp = new_partial_dir(final)
    except OSError as exc:
        raise os_error(exc, final) from None
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise NeuronforgeError(f"{final} already exists", "choose another output path")
            trash = _temp_name(final, "old")
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException as exc:
        written = tree_bytes(tmp) if is_disk_full(exc) else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(final, written) from None
        raise


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp file path next to `path` (pid-tagged: two writers never share it); it replaces `path` only if
    the block succeeds, and is removed otherwise (a full disk becomes `disk_full_error`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, path.name)
    tmp = _temp_name(path, "partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path, written) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and an atomic rename."""
    with atomic_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, like open()
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def link_tree(src: Path, dst: Path, ignore: tuple[str, ...] = ()) -> None:
    """Copy a folder by hard links (free for multi-GB checkpoints); real copies where the filesystem refuses.

    `ignore`: file or folder names (glob patterns) left out at any depth.
    """

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
