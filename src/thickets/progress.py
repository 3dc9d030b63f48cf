"""Progress for long work: rich's live bar at a terminal, plain lines in a log.

rich draws nothing when its output is a file or a pipe (a cluster job's log), so there the same
updates are printed as one line each, at most every THICKETS_PROGRESS_SECONDS seconds (30 by
default), plus the first and the last: a log shows that the run is alive and how far it is.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class Update(Protocol):
    """What `bar` yields: advance the count, and show `fields` (e.g. best=0.42)."""

    def __call__(self, advance: int = 1, **fields: object) -> None: ...


@dataclass
class _PlainState:
    done: int = 0
    info: str = ""
    printed: float | None = None


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("THICKETS_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


@contextlib.contextmanager
def _plain(description: str, total: int, stream: IO[str]) -> Iterator[Update]:
    """Yields update(advance=1, **fields); prints a line when the interval has passed and at the end."""
    start = time.monotonic()
    state = _PlainState()
    interval = _interval()

    def line() -> None:
        done, elapsed = state.done, time.monotonic() - start
        left = f" left {_clock(elapsed / done * (total - done))}" if 0 < done < total else ""
        share = f" ({done / total:.0%})" if total else ""
        info = f" {state.info}" if state.info else ""
        print(f"{description} {done}/{total}{share}{info} elapsed {_clock(elapsed)}{left}", file=stream, flush=True)
        state.printed = time.monotonic()

    def update(advance: int = 1, **fields: object) -> None:
        state.done += advance
        if fields:
            state.info = " ".join(f"{k}={v}" for k, v in fields.items())
        if state.printed is None or time.monotonic() - state.printed >= interval:
            line()

    try:
        yield update
    finally:
        line()


@contextlib.contextmanager
def bar(description: str, total: int, enabled: bool = True) -> Iterator[Update]:
    """Yields update(advance=1, **fields); fields show in the bar (e.g. best=0.42)."""
    if not enabled:
        yield lambda advance=1, **fields: None
        return
    if not console.is_terminal:
        with _plain(description, total, console.file) as update:
            yield update
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def update(advance: int = 1, **fields: object) -> None:
            info = " ".join(f"{k}={v}" for k, v in fields.items())
            shown: dict[str, Any] = {"info": info} if fields else {}
            progress.update(task, advance=advance, **shown)

        yield update
