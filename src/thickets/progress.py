"""Progress for long work: rich's live bar at a terminal, plain lines in a log.

rich draws nothing when its output is a file or a pipe (a cluster job's log), so there the same
updates are printed as one line each, at most every THICKETS_PROGRESS_SECONDS seconds (30 by
default), plus the first and the last: a log shows that the run is alive and how far it is.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta

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


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("THICKETS_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


@contextlib.contextmanager
def _plain(description: str, total: int, stream):
    """Yields update(advance=1, **fields); prints a line when the interval has passed and at the end."""
    start = time.monotonic()
    state = {"done": 0, "info": "", "printed": None}
    interval = _interval()

    def line() -> None:
        done, elapsed = state["done"], time.monotonic() - start
        left = f" left {_clock(elapsed / done * (total - done))}" if 0 < done < total else ""
        share = f" ({done / total:.0%})" if total else ""
        info = f" {state['info']}" if state["info"] else ""
        print(f"{description} {done}/{total}{share}{info} elapsed {_clock(elapsed)}{left}", file=stream, flush=True)
        state["printed"] = time.monotonic()

    def update(advance: int = 1, **fields) -> None:
        state["done"] += advance
        if fields:
            state["info"] = " ".join(f"{k}={v}" for k, v in fields.items())
        if state["printed"] is None or time.monotonic() - state["printed"] >= interval:
            line()

    try:
        yield update
    finally:
        line()


@contextlib.contextmanager
def bar(description: str, total: int, enabled: bool = True):
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

        def update(advance: int = 1, **fields) -> None:
            info = " ".join(f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=advance, **({"info": info} if fields else {}))

        yield update
