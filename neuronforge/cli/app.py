"""The Typer app class that turns every failure a user can act on into `error:`/`fix:` lines, never a traceback.

NeuronforgeError exits 2, and so does click's usage error (an unknown flag, a flag value of the wrong type),
printed the same way instead of click's boxed usage text. An OSError that got past the checks (disk full, a
read-only mount, a file removed underneath us) exits 2 with the OS's own words. Ctrl-C and SIGTERM exit
128 + the signal number, after the interrupted step removed its temp folder. Messages are printed as plain
text: a path or a YAML snippet holding `[...]` must never be read as rich markup.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer._click import Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer >= 0.29 bundles its own click
from typer.core import TyperGroup

from neuronforge.core.progress import err_console
from neuronforge.errors import Interrupted, NeuronforgeError, interrupt_message

console = Console()
EXIT_USER_ERROR = 2


def print_error(what: str, fix: str | None = None) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", what))
    if fix:
        err_console.print(Text.assemble(("fix:", "bold"), " ", fix))


# How long a SIGTERM that arrived inside a finalizer waits before it is delivered again.
REDELIVERY_S = 0.05


def _in_finalizer(frame: FrameType | None) -> bool:
    """Whether `frame` runs inside an object's `__del__`, where Python prints and drops any exception."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def stop_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so a stopped run cleans up and says so (the default kills silently).

    A signal that lands in a finalizer is sent again a moment later instead of being raised there: Python drops
    exceptions from `__del__`, and the run went on to finish (seen in CI: garbage collected during an import
    inside auto-round, a `regex` pattern's `__del__`)."""

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        if _in_finalizer(frame):
            threading.Timer(REDELIVERY_S, os.kill, (os.getpid(), signum)).start()
            return
        raise Interrupted("SIGTERM", signum)

    signal.signal(signal.SIGTERM, raise_interrupted)


# What an interrupted local command leaves: its step's temp folder is removed (the default for App's commands).
LOCAL_INTERRUPT = (
    "the step that was running left no partial output",
    "run the same command again (`neuronforge run` resumes at the stage that did not finish)",
)


def _friendly_errors(fn: Callable[..., Any], interrupt: tuple[str, str] = LOCAL_INTERRUPT) -> Callable[..., Any]:
    """`interrupt` is what Ctrl-C leaves and what to do, unless the exception carries its own notes
    (`exc.add_note(state)`, then optionally `exc.add_note(fix)`): commands that talk to AWS say what exists there."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NeuronforgeError as exc:
            print_error(exc.what, exc.fix)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as exc:
            notes = getattr(exc, "__notes__", None) or []
            state, fix = (notes + [interrupt[1]])[:2] if notes else interrupt
            print_error(f"{interrupt_message(exc)}; {state}", fix)
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


def _usage_error(exc: UsageError, ctx: Context | None = None) -> typer.Exit:
    """click's usage error (a bad flag or flag value) as `error:`/`fix:` lines; the Exit to raise (code 2).
    Some parser errors carry no context: then the help to see is that of `ctx`'s subcommand."""
    if exc.ctx is not None:
        command = exc.ctx.command_path
    else:
        command = " ".join(
            filter(None, [ctx.command_path if ctx else "neuronforge", ctx.invoked_subcommand if ctx else None])
        )
    print_error(exc.format_message(), f"see `{command} --help`")
    return typer.Exit(EXIT_USER_ERROR)


class FriendlyGroup(TyperGroup):
    """The root command group: click's usage errors, raised while parsing the root's or any command's flags,
    come out as `error:`/`fix:` lines like every other bad input (click would print a boxed usage text)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:  # a bare group prints its help, as before
            raise
        except UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise _usage_error(exc, ctx) from None


class App(typer.Typer):
    """A Typer app whose commands report failures as `error:`/`fix:` lines (see the module docstring)."""

    def __init__(self, interrupt: tuple[str, str] = LOCAL_INTERRUPT, **kwargs: Any) -> None:
        """`interrupt`: what an interrupted command of this app leaves behind, and what to do (_friendly_errors)."""
        self.interrupt = interrupt
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    # (the ignore: typer's arguments pass through unchanged; spelling them all out would copy typer's signature)
    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_friendly_errors(fn, self.interrupt))
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
