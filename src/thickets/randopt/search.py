"""RandOpt: sample perturbations around the base weights, score each on the validation split, keep them all.

The whole algorithm is `search()` below. Candidate i of a run is fixed by the config alone
(its seed comes from the run seed and i; sigmas are taken from the grid in round robin), so
resuming is simply "score the indices the store does not have yet". Where a candidate is scored
is the executor's business; only this loop writes the store, one candidate per transaction.

With `--sigma auto` the first candidates are a pilot (randopt/pilot.py): one grid point of sigma
at a time, ascending, until one collapses; its choice is then written into the stored config,
and the rest of the population takes the chosen sigma. The pilot's candidates stay in the run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from thickets.engines import Engine
from thickets.engines.rounding import rounding_warning
from thickets.progress import bar
from thickets.randopt import pilot
from thickets.randopt.config import SearchConfig
from thickets.randopt.executors import Executor, InProcessExecutor, Item
from thickets.randopt.preflight import prepare, run_record
from thickets.randopt.scoring import race_for
from thickets.randopt.store import BASE, Candidate, RunStore, Summary
from thickets.randopt.vote import rank
from thickets.tracking import NO_TRACKER, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    base: Summary  # the unperturbed model on the validation split
    ranked: list[Candidate]  # every finished candidate, best first
    calibration: dict[str, Any] | None = None  # --sigma auto: the pilot's curve and choice (pilot.record)
    unscored: dict[str, int] = field(default_factory=dict)  # rows without a verdict, per split (RunStore.unscored)


def search(
    config: SearchConfig,
    run_dir: str | Path,
    *,
    engine: Engine | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    pilot_only: bool = False,
    tracker: Tracker = NO_TRACKER,
) -> SearchResult:
    """Score candidates 0..population-1 that the run folder does not have yet; returns all of them ranked.

    `executor` decides where candidates are scored (in this process by default, or on Ray
    workers); `engine` is the in-process executor's engine (loaded from the config if not given).
    `pilot_only` (`calibrate`): with --sigma auto, score only the pilot; the run's population is then
    the pilot's size.
    """
    run_dir = Path(run_dir)
    # 1. Everything bad input can break is checked before a model loads or anything is written.
    config, task, val, identity = prepare(config, run_dir, pilot_only)
    race = race_for(config, task)
    own = executor is None
    executor = executor or InProcessExecutor(config, engine, task=task, val=val)
    executor.adopt(config)
    try:
        with RunStore.open(run_dir, config, meta=run_record(config, identity, executor.describe(), task)) as store:
            if warning := rounding_warning(store.meta("rounding")):
                log.warning(warning)
            # 2. What the store holds: the base (scored once, first), and the candidates' scores.
            done = store.candidates()
            scores = {c.idx: c.score for c in done}
            stored_base = store.scores(BASE, "val")
            base = Summary.of(list(stored_base.values())) if stored_base else None

            # 3. Racing's bar for a candidate given out now: the K-th best finished score.
            finished = [c.score for c in done if c.complete]
            stopped = len(done) - len(finished)
            phase: dict[str, str] = {}  # the pilot's grid point, or the sigma it chose, on the bar

            def threshold() -> float | None:
                return race.threshold(finished) if race else None

            def shown() -> dict[str, Any]:  # fields for the progress bar
                return dict(
                    base=f"{base.score:.3f}" if base else "-",
                    best=f"{max(finished):.3f}" if finished else "-",
                    **phase,
                    **({"raced": stopped} if race else {}),
                )

            # 4. Score through the executor; commit each result as it arrives.
            total = config.pilot_size if pilot_only else config.population
            with bar("calibrate" if pilot_only else "search", total, progress) as update:
                update(advance=len(done), **shown())

                def score(items: Iterable[Item], bar_for: Callable[[], float | None]) -> None:
                    nonlocal base, stopped
                    for item, rows, seconds in executor.run(items, bar_for):
                        if item is None:
                            store.add_results(BASE, "val", rows)
                            base = Summary.of([r.score for r in rows])
                            update(advance=0, **shown())
                            tracker.log({"search/base_score": base.score, "search/base_accuracy": base.accuracy}, 0)
                            continue
                        spec = config.candidate(item)
                        cand = store.add_candidate(item, spec.seed, spec.sigma, rows, seconds)
                        scores[item] = cand.score
                        if cand.complete:
                            finished.append(cand.score)
                        else:
                            stopped += 1
                        update(**shown())
                        tracker.log(
                            {
                                "search/score": cand.score,
                                "search/accuracy": cand.accuracy,
                                "search/sigma": spec.sigma,
                                "search/best": max(finished, default=float("nan")),
                                "search/seconds": seconds,
                            },
                            item,
                        )

                # 5. --sigma auto: the pilot, one grid point at a time (never raced: its scores are the curve).
                grid, m = config.pilot_grid, config.pilot_per_sigma
                while not config.calibrated:
                    points = pilot.curve(grid, m, scores, base.score, config.pilot_collapse) if base else []
                    if pilot.walk_over(points, grid):
                        assert base is not None
                        chosen = pilot.choose(points, config.pilot_rule, config.pilot_keep)
                        config = config.with_choice(tuple(p.sigma for p in points), chosen)
                        if pilot_only:  # the run as it stands: the pilot's candidates, no more
                            config = replace(config, population=config.pilot_size)
                        record = pilot.record(
                            grid=grid,
                            per_sigma=m,
                            rule=config.pilot_rule,
                            keep=config.pilot_keep,
                            collapse=config.pilot_collapse,
                            base=base.score,
                            points=points,
                            chosen=chosen,
                        )
                        store.record_calibration(config, record)
                        executor.adopt(config)
                        for g, point in enumerate(points):
                            tracker.log({f"pilot/{k}": v for k, v in point.to_dict().items()}, g)
                        break
                    g = len(points)
                    phase = {"pilot": f"{grid[g]:g}({g + 1}/{len(grid)})"}
                    score([None] * (base is None) + [i for i in pilot.indices(g, m) if i not in scores], lambda: None)
                store.write_calibration_file()  # if a kill came between the choice's commit and the file

                # 6. The population: every index the store lacks, lazily (after a pilot, at the sigma it chose).
                if config.auto:
                    phase = {"sigma": "auto:" + ",".join(f"{x:g}" for x in config.pilot_chosen)}
                if not pilot_only:
                    items: itertools.chain[Item] = itertools.chain(
                        [] if base else [None], (i for i in range(config.population) if i not in scores)
                    )
                    score(items, threshold)
            # 7. Rank everything the run folder holds.
            assert base is not None
            return SearchResult(run_dir, base, rank(store.candidates()), store.calibration(), store.unscored())
    finally:
        if own:
            executor.close()
