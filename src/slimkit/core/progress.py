"""Progress bars (rich) on stderr; silenced by ``--quiet`` or SLIMKIT_QUIET=1."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_QUIET = [os.environ.get("SLIMKIT_QUIET", "") not in ("", "0")]


def set_quiet(quiet: bool) -> None:
    _QUIET[0] = bool(quiet)


def is_quiet() -> bool:
    return _QUIET[0]


def track(it: Iterable[T], description: str, total: Optional[int] = None) -> Iterator[T]:
    if is_quiet():
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=console.is_terminal) as prog:
        task = prog.add_task(description, total=total if total is not None else (len(it) if hasattr(it, "__len__") else None))
        for item in it:
            yield item
            prog.advance(task)


def info(msg: str) -> None:
    if not is_quiet():
        print(msg, file=sys.stderr, flush=True)
