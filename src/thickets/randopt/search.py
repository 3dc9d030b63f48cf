"""RandOpt: sample perturbations around the base weights, score each on the validation split, keep them all.

The whole algorithm is `search()` below. Candidate i of a run is fixed by the config alone
(its seed comes from the run seed and i; sigmas are taken from the grid in round robin), so
resuming is simply "score the indices the store does not have yet". Where a candidate is scored
is the executor's business; only this loop writes the store, one candidate per transaction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thickets.engines import Engine
from thickets.progress import bar
from thickets.randopt.config import SearchConfig
from thickets.randopt.executors import Executor, InProcessExecutor, Item
from thickets.randopt.scoring import prepare, race_for, run_record
from thickets.randopt.store import BASE, Candidate, RunStore, Summary
from thickets.randopt.vote import rank


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    base: Summary  # the unperturbed model on the validation split
    ranked: list[Candidate]  # every finished candidate, best first


def search(
    config: SearchConfig,
    run_dir: str | Path,
    *,
    engine: Engine | None = None,
    executor: Executor | None = None,
    progress: bool = True,
) -> SearchResult:
    """Score candidates 0..population-1 that the run folder does not have yet; returns all of them ranked.

    `executor` decides where candidates are scored (in this process by default, or on Ray
    workers); `engine` is the in-process executor's engine (loaded from the config if not given).
    """
    run_dir = Path(run_dir)
    # 1. Everything bad input can break is checked before a model loads or anything is written.
    config, task, val, identity = prepare(config, run_dir)
    race = race_for(config, task)
    own = executor is None
    executor = executor or InProcessExecutor(config, engine, task=task, val=val)
    executor.adopt(config)
    try:
        with RunStore.open(run_dir, config, meta=run_record(config, identity, executor.describe(), task)) as store:
            # 2. The population: the base first (once), then every index the store lacks, lazily.
            done = store.candidates()
            done_idx = {c.idx for c in done}
            stored_base = store.scores(BASE, "val")
            base = Summary.of(list(stored_base.values())) if stored_base else None
            items: itertools.chain[Item] = itertools.chain(
                [] if base else [None], (i for i in range(config.population) if i not in done_idx)
            )

            # 3. Racing's bar for a candidate given out now: the K-th best finished score.
            finished = [c.score for c in done if c.complete]
            stopped = len(done) - len(finished)

            def threshold() -> float | None:
                return race.threshold(finished) if race else None

            def shown() -> dict[str, Any]:  # fields for the progress bar
                return dict(
                    base=f"{base.score:.3f}" if base else "-",
                    best=f"{max(finished):.3f}" if finished else "-",
                    **({"raced": stopped} if race else {}),
                )

            # 4. Score through the executor; commit each result as it arrives.
            with bar("search", config.population, progress) as update:
                update(advance=len(done), **shown())
                for item, rows, seconds in executor.run(items, threshold):
                    if item is None:
                        store.add_results(BASE, "val", rows)
                        base = Summary.of([r.score for r in rows])
                        update(advance=0, **shown())
                        continue
                    spec = config.candidate(item)
                    cand = store.add_candidate(item, spec.seed, spec.sigma, rows, seconds)
                    if cand.complete:
                        finished.append(cand.score)
                    else:
                        stopped += 1
                    update(**shown())
            # 5. Rank everything the run folder holds.
            assert base is not None
            return SearchResult(run_dir, base, rank(store.candidates()))
    finally:
        if own:
            executor.close()
