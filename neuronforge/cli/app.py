"""The Typer app class that turns every failure a user can act on into `error:`/`fix:` lines, never a traceback.

NeuronforgeError exits 2. An OSError that got past the checks (disk full, a read-only mount, a file removed
underneath us) exits 2 with the OS's own words. Ctrl-C and SIGTERM exit 128 + the signal number, after
the interrupted step removed its temp folder. Messages are printed as plain text: a path or a YAML snippet
holding `[...]` must never be read as rich markup.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from neuronforge.core.progress import err_console
from neuronforge.errors import Interrupted, NeuronforgeError, interrupt_message

console = Console()
EXIT_USER_ERROR = 2


def print_error(what: str, fix: str | None = None) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", what))
    if fix:
        err_console.print(Text.assemble(("fix:", "bold"), " ", fix))


def stop_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so a stopped run cleans up and says so (the default kills silently)."""

    def raise_interrupted(signum: int, frame: object) -> None:
        raise Interrupted("SIGTERM", signum)

    signal.signal(signal.SIGTERM, raise_interrupted)


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NeuronforgeError as exc:
            print_error(exc.what, exc.fix)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as exc:
            print_error(
                f"{interrupt_message(exc)}; the step that was running left no partial output",
                "run the same command again (`neuronforge run` resumes at the stage that did not finish)",
            )
            number = exc.signal_number if isinstance(exc, Interrupted) else signal.SIGINT
            raise typer.Exit(128 + number) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print_error(
                f"{exc.strerror or exc}{where}",
                "check that path: its permissions, the free disk space, and that nothing else removed it",
            )
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper


class App(typer.Typer):
    """A Typer app whose commands report failures as `error:`/`fix:` lines (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_friendly_errors(fn))
            return fn

        return decorator


def checked_out(out: Path, **inputs: str | Path | None) -> Path:
    """A standalone command's --out, refused before any work when it overlaps an input (`model=...`,
    `text=...`; embedded model names are not paths), is a file, is not writable, or is inside a run directory."""
    from neuronforge.assets.models import EMBEDDED_MODELS
    from neuronforge.core.outputs import check_output

    flags = {f"--{name.replace('_', '-')}": value for name, value in inputs.items()}
    if flags.get("--model") in EMBEDDED_MODELS:
        flags["--model"] = None
    return check_output(out, flags)
