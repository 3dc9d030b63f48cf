"""`thickets calibrate`: only the pilot of a run with --sigma auto, and its curve and choice.

    record = calibrate(SearchConfig(task="products", val_size=48, max_new_tokens=12), "runs/auto")
    record["chosen"]  # then search(SearchConfig(..., sigmas="auto", population=96), "runs/auto")

The pilot's candidates are the run's first candidates: a later `search --sigma auto` of the same
folder goes on from them, with the sigma chosen here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from thickets.engines import Engine
from thickets.randopt.config import AUTO, SearchConfig
from thickets.randopt.executors import Executor
from thickets.randopt.search import search
from thickets.randopt.store import read_config
from thickets.tracking import NO_TRACKER, Tracker


def calibrate(
    config: SearchConfig,
    run_dir: str | Path,
    *,
    engine: Engine | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    tracker: Tracker = NO_TRACKER,
) -> dict[str, Any]:
    """Walk the pilot of `config` with sigma auto (its sigmas and population are not used) in `run_dir`,
    a new folder or one whose pilot is under way or done; returns the pilot's record (pilot.record)."""
    stored = read_config(Path(run_dir))
    if stored is not None and stored.auto and stored.calibrated:
        population = stored.population  # done: nothing is scored, the folder stays as it is
    else:  # the most candidates the pilot can take, or what the folder asks for already (it cannot shrink)
        population = max(replace(config, sigmas=AUTO).starting().pilot_size, stored.population if stored else 0)
    result = search(
        replace(config, sigmas=AUTO, population=population),
        run_dir,
        engine=engine,
        executor=executor,
        progress=progress,
        pilot_only=True,
        tracker=tracker,
    )
    assert result.calibration is not None
    return result.calibration
