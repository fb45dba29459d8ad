"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""

from __future__ import annotations

from collections.abc import Sequence
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
