"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydantic

Model = TypeVar("Model", bound=pydantic.BaseModel)
Choice = TypeVar("Choice", bound=str)


class NeuronforgeError(Exception):
    """A failure the user can act on: `what` went wrong and `fix` says what to do about it."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}\n  fix: {fix}")


def current_dir_is_gone() -> bool:
    """The process's current directory was deleted (or moved away) underneath it: os.getcwd() fails."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def os_error(exc: OSError, path: str | Path | None = None, flag: str | None = None) -> NeuronforgeError:
    """An OSError as an error that names the path and the real cause, with a fix for that cause: the one place
    the OS's words are translated (the output checks, the run directory, the cache, and the CLI's last resort).
    The OS's own text named no path (a deleted current directory), an empty one ("File name too long: ") or,
    for a dangling link, a cause that was not the problem (report O06, O07, O12)."""
    if exc.errno == errno.ENOENT and current_dir_is_gone():
        return NeuronforgeError(
            "the current directory no longer exists (it was deleted or moved underneath this shell)",
            "cd into an existing folder and run the command again",
        )
    where = str(exc.filename if path is None and exc.filename else path or "")
    label = f"{flag} {where}".strip() if flag else where
    causes: dict[int, tuple[str, str]] = {
        errno.ENAMETOOLONG: (
            f"{label} is too long: a name in it is longer than the file system allows (255 bytes for most)",
            f"choose a shorter {flag or 'path'}",
        ),
        errno.EACCES: (
            f"{label} cannot be used: permission denied",
            "fix the permissions, or choose a location you may write",
        ),
        errno.EPERM: (
            f"{label} cannot be used: the operation is not permitted (an immutable or append-only folder?)",
            "fix the permissions or attributes (lsattr/chattr -i), or choose another location",
        ),
        errno.EROFS: (f"{label} is on a read-only file system", "choose a location on a writable file system"),
        errno.ENOTDIR: (
            f"{label} cannot be used: a part of it is a file, not a folder",
            "choose a path whose folders are folders",
        ),
        errno.ELOOP: (f"{label} goes through a loop of symbolic links", "fix or remove the links"),
        errno.ENOENT: (f"{label} does not exist", "check the path; was it removed while the command ran?"),
    }
    if exc.errno in causes:
        return NeuronforgeError(*causes[exc.errno])
    return NeuronforgeError(
        f"{label + ': ' if label else ''}{exc.strerror or exc}",
        "check that path: its permissions, the free disk space, and that nothing else removed it",
    )


def one_of(value: str, allowed: Sequence[Choice], flag: str) -> Choice:
    """`value` as the one of `allowed` it equals (so typed as a choice: a Literal for a tuple of Literals);
    otherwise an error naming the flag and the choices."""
    for choice in allowed:
        if choice == value:
            return choice
    raise NeuronforgeError(f"{flag} '{value}' is not supported", f"use one of: {', '.join(allowed)}")


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (Ctrl-C, or SIGTERM from `kill`, `docker stop`, a spot interruption).

    A KeyboardInterrupt, so every `except BaseException` cleanup (temp folders, the manifest) runs as for Ctrl-C.
    """

    def __init__(self, signal_name: str, signal_number: int) -> None:
        self.signal_name = signal_name
        self.signal_number = signal_number
        super().__init__(f"stopped by {signal_name}")


def interrupt_message(exc: KeyboardInterrupt) -> str:
    """What to record for an interrupted step: `stopped by SIGTERM`, or `interrupted (Ctrl-C)`."""
    return str(exc) if isinstance(exc, Interrupted) else "interrupted (Ctrl-C)"


def validated(schema: type[Model], command: str, /, **values: Any) -> Model:
    """Build `schema` from keyword values; pydantic's errors become one NeuronforgeError naming every bad field."""
    try:
        return schema(**values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise NeuronforgeError(
            f"invalid {command} options: {problems}", f"see `neuronforge {command} --help`"
        ) from None


Expected = TypeVar("Expected")


def expect(value: Any, kind: type[Expected] | tuple[type, ...], where: str, what: str | None = None) -> Expected:
    """An argument of the Python API of the type it must have; otherwise a NeuronforgeError naming both types
    (instead of an AttributeError or a torch error many frames deeper)."""
    if isinstance(value, kind):
        return value  # type: ignore[return-value]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(k.__name__ for k in kinds)
    raise NeuronforgeError(
        f"{where} takes {what or 'a ' + names}, got {type(value).__name__} {value!r:.60}",
        f"pass {what or names}"
        + (f", e.g. nf.{kinds[0].__name__}(...)" if issubclass(kinds[0], pydantic.BaseModel) else ""),
    )
