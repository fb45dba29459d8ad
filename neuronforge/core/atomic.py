"""Write-then-rename helpers: a killed process never leaves a half-written artifact behind.

Temp names carry the writer's pid (`.<name>.partial-<pid>-<hex>`, `.<name>.old-<pid>-<hex>`), so the next
writer of the same target removes what a killed one left, and only that: a name of exactly this shape
whose process is gone. New folders and files get the usual permissions (0777/0666 less the umask), not
the private 0700/0600 of `tempfile.mkdtemp`/`mkstemp`, so a run directory or cache one user makes is
readable by the others the umask allows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuronforge.errors import NeuronforgeError

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


def _new_dir(final: Path) -> Path:
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
        tmp = _new_dir(final)
    except OSError as exc:
        raise NeuronforgeError(
            f"cannot create {final} ({exc.strerror})", "choose a writable location, or fix its permissions"
        ) from None
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, like open()
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
