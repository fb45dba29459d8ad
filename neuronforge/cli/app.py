"""The Typer app class that turns every failure a user can act on into `error:`/`fix:` lines, never a traceback.

NeuronforgeError exits 2, and so does click's usage error (an unknown flag, a flag value of the wrong type),
printed the same way instead of click's boxed usage text. An OSError that got past the checks (disk full, a
read-only mount, a file removed underneath us) exits 2, its path and cause said by `errors.os_error`. Ctrl-C and SIGTERM exit
128 + the signal number, after the interrupted step removed its temp folder. Messages are printed as plain
text: a path or a YAML snippet holding `[...]` must never be read as rich markup.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
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

from neuronforge.assets.models import input_path
from neuronforge.core.atomic import is_disk_full
from neuronforge.core.outputs import check_output
from neuronforge.core.progress import err_console
from neuronforge.errors import Interrupted, NeuronforgeError, current_dir_is_gone, interrupt_message, os_error

console = Console()
EXIT_USER_ERROR = 2


def print_error(what: str, fix: str | None = None) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", what))
    if fix:
        err_console.print(Text.assemble(("fix:", "bold"), " ", fix))


# How long a signal whose exception Python dropped waits before it is delivered again.
REDELIVERY_S = 0.05


def _redeliver_dropped_interrupt(unraisable: Any) -> None:
    """`sys.unraisablehook`: Python prints and drops an exception raised where nobody can catch it (`__del__`,
    a weakref or GC callback). A Ctrl-C or SIGTERM handled there was lost and the command ran on to exit 0
    (CI: a regex pattern's `__del__`; report G10: a WeakKeyDictionary callback during `evaluate`). The signal
    is sent again a moment later instead, outside the callback; anything else goes to Python's own hook."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        number = exc.signal_number if isinstance(exc, Interrupted) else signal.SIGINT
        threading.Timer(REDELIVERY_S, os.kill, (os.getpid(), number)).start()
        return
    sys.__unraisablehook__(unraisable)


def stop_on_sigterm() -> None:
    """Turn SIGTERM and SIGHUP (a closed terminal) into an exception, so a stopped command cleans up and says so
    (the default kills silently), and never lose one to a finalizer (`_redeliver_dropped_interrupt`)."""

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name, signum)

    signal.signal(signal.SIGTERM, raise_interrupted)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under `nohup` a closed terminal must not stop it
        signal.signal(signal.SIGHUP, raise_interrupted)
    sys.unraisablehook = _redeliver_dropped_interrupt


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
            if current_dir_is_gone():  # relative paths mean nothing, and torch cannot even load (report O12)
                raise os_error(FileNotFoundError(errno.ENOENT, "No such file or directory"))
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
        except Exception as exc:
            if is_disk_full(exc):  # outside any output folder (those say more: core/atomic.py), or not an OSError
                where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
                print_error(f"the disk is full{where}: {exc}", "free space on that disk and run the same command again")
                raise typer.Exit(EXIT_USER_ERROR) from None
            if not isinstance(exc, OSError):
                raise
            error = os_error(exc)
            print_error(error.what, error.fix)
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


def checked_out(out: Path, overwrite: bool = False, **inputs: str | Path | None) -> Path:
    """A standalone command's --out, refused before any work when it overlaps an input (`model=...`,
    `text=...`; an embedded model name stands for its cache folder), is a file, is not writable, is inside a
    run directory, or exists and is not a folder neuronforge may replace (`core.outputs.check_replaceable`)."""
    flags = {f"--{name.replace('_', '-')}": value for name, value in inputs.items()}
    if "--model" in flags:
        flags["--model"] = input_path(flags["--model"])
    return check_output(out, flags, overwrite=overwrite)
