"""The Typer app class that turns NeuronforgeError into `error:`/`fix:` lines and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError

console = Console()
EXIT_USER_ERROR = 2


def print_error(exc: NeuronforgeError) -> None:
    err_console.print(f"[bold red]error:[/] {exc.what}", highlight=False)
    if exc.fix:
        err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NeuronforgeError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper


class App(typer.Typer):
    """A Typer app whose commands report NeuronforgeError as `error:`/`fix:` lines and exit 2."""

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
