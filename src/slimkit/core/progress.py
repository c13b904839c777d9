"""Progress bars (rich) on stderr; silenced by ``--quiet`` or SLIMKIT_QUIET=1."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_QUIET = [os.environ.get("SLIMKIT_QUIET", "") not in ("", "0")]


def set_quiet(quiet: bool) -> None:
    _QUIET[0] = bool(quiet)


def is_quiet() -> bool:
    return _QUIET[0] or _MUTED[0] > 0


_MUTED = [0]


@contextlib.contextmanager
def muted(on: bool = True):
    """Silence the bars and lines of the work inside the block (the planner shows one line per candidate instead);
    ``headline`` still prints unless the user asked for quiet."""
    _MUTED[0] += int(on)
    try:
        yield
    finally:
        _MUTED[0] -= int(on)


def headline(msg: str) -> None:
    """A line that a muted block still shows (the planner's per-trial summary)."""
    if not _QUIET[0]:
        print(msg, file=sys.stderr, flush=True)


def _status(status: Optional[dict]) -> str:
    if not status:
        return ""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in status.items())


def track(it: Iterable[T], description: str, total: Optional[int] = None,
          status: Optional[dict] = None) -> Iterator[T]:
    """A progress bar with elapsed time and ETA. ``status``: a dict the caller updates while iterating (e.g. the
    running loss and metric of a fine-tune); it is shown after the bar."""
    if is_quiet():
        yield from it
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=console.is_terminal) as prog:
        task = prog.add_task(description, status="",
                             total=total if total is not None else (len(it) if hasattr(it, "__len__") else None))
        for item in it:
            yield item
            prog.update(task, advance=1, status=_status(status))


def info(msg: str) -> None:
    if not is_quiet():
        print(msg, file=sys.stderr, flush=True)
