"""Shared rich console, progress bars and the Typer app class that turns NeuronforgeError into a clean exit."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from neuronforge.errors import NeuronforgeError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")
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


def progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr around any iterable."""
    with progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.advance(task)
