"""Progress bars for long work (rich), silent when asked to be."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextlib.contextmanager
def bar(description: str, total: int, enabled: bool = True):
    """Yields update(advance=1, **fields); fields show in the bar (e.g. best=0.42)."""
    if not enabled:
        yield lambda advance=1, **fields: None
        return
    columns = [
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def update(advance: int = 1, **fields) -> None:
            info = " ".join(f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=advance, **({"info": info} if fields else {}))

        yield update
