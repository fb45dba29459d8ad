"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""

from __future__ import annotations


class NeuronforgeError(Exception):
    """A failure the user can act on: `what` went wrong and `fix` says what to do about it."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}\n  fix: {fix}")
