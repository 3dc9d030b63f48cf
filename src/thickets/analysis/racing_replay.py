"""Would racing have kept this run's top K, and what would it have saved? Replayed on a finished run.

The same `Race` decides here as in a live search, so measured and live behaviour cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.randopt.racing import Race, replay_many
from thickets.randopt.store import RunStore, candidate_model


def stored_rewards(run_dir: str | Path) -> list[list[float]]:
    """Per-example validation rewards of a run's fully scored candidates (candidate x example)."""
    with RunStore.open(run_dir, write=False) as store:
        out = []
        for c in store.candidates():
            if c.complete:
                scores = store.scores(candidate_model(c.idx), "val")
                out.append([scores[i].reward for i in sorted(scores)])
    return out


def replay_run(
    run_dir: str | Path,
    k: int = 5,
    chunk: int = 8,
    deltas: Sequence[float] = (0.2, 0.05, 0.01),
    orders: int = 200,
    reward_range: tuple[float, float] = (0.0, 1.0),
) -> list[dict[str, Any]]:
    """How racing would have done on a finished exhaustive run: top-K agreement and generation saved."""
    rewards = stored_rewards(run_dir)
    if len(rewards) <= k:
        raise ThicketsError(f"replaying racing needs more than {k} fully scored candidates in {run_dir}")
    races = [Race(len(rewards[0]), k, "exact", 0.05, *reward_range, chunk=chunk)]
    races += [Race(len(rewards[0]), k, "hoeffding", d, *reward_range, chunk=chunk) for d in deltas]
    return [replay_many(rewards, race, orders) for race in races]
