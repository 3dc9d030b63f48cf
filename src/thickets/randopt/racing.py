"""Racing: stop scoring a candidate once it cannot reach the top K.

A candidate is scored on the validation split chunk by chunk. After each chunk we bound its
final validation score from above and stop when the bound falls below the score of the K-th
best finished candidate. Two bounds:

- "exact": every remaining example earns the task's maximum reward. Never drops a candidate
  that the exhaustive search would place in the top K (ties included), but saves little.
- "hoeffding": a concentration bound on the final score. Validation examples come in a random
  order, so the m seen are a sample without replacement of the n, and Serfling's inequality
  (Hoeffding's, tightened for sampling without replacement) bounds the final mean by the mean so
  far plus range * sqrt((1 - (m-1)/n) * ln(J/delta) / 2m). The bound is checked after each of the
  J = ceil(n / chunk) - 1 chunks before the last, each at level delta/J (a union bound), so a
  candidate whose final score ties or beats the threshold is dropped with probability at most
  delta over the whole race, not per check. Saves more than exact; `replay` measures how often it
  changes the top K on stored runs, and `simulate_drop_rate` checks the delta promise.

The same `Race` object decides in a live search and in `replay`, so measured and live
behaviour cannot drift apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thickets.errors import ThicketsError

MODES = ("off", "exact", "hoeffding")


@dataclass(frozen=True)
class Race:
    n: int  # validation examples a full score averages over
    k: int  # how many of the best must be kept exact
    mode: str = "exact"
    delta: float = 0.05
    min_reward: float = 0.0
    max_reward: float = 1.0
    chunk: int = 1  # examples scored between two checks

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ThicketsError(f"unknown racing mode {self.mode!r}; use {', '.join(MODES)}")
        if self.k < 1:
            raise ThicketsError(f"racing top-k must be at least 1, got {self.k}")
        if not 0 < self.delta < 1:
            raise ThicketsError(f"racing delta must be in (0, 1), got {self.delta}")
        if not self.max_reward > self.min_reward:
            raise ThicketsError("racing needs a reward range with max above min")
        if self.chunk < 1:
            raise ThicketsError(f"racing needs at least 1 example between checks, got {self.chunk}")

    @property
    def checks(self) -> int:
        """How many times a candidate can be stopped: after every chunk but the last."""
        return max(1, math.ceil(self.n / self.chunk) - 1)

    def threshold(self, finished_scores: Sequence[float]) -> float | None:
        """The score to beat: the K-th best finished score, or None while fewer than K have finished."""
        if self.mode == "off" or len(finished_scores) < self.k:
            return None
        return sorted(finished_scores, reverse=True)[self.k - 1]

    def upper_bound(self, rewards: Sequence[float]) -> float:
        """The highest final validation score still plausible after these rewards."""
        m, rest = len(rewards), self.n - len(rewards)
        if m == 0:
            return self.max_reward
        total = float(sum(rewards))
        exact = (total + rest * self.max_reward) / self.n
        if self.mode != "hoeffding":
            return exact
        spread = self.max_reward - self.min_reward
        margin = spread * math.sqrt((1 - (m - 1) / self.n) * math.log(self.checks / self.delta) / (2 * m))
        return min(exact, total / m + margin)

    def should_stop(self, rewards: Sequence[float], threshold: float | None) -> bool:
        return threshold is not None and len(rewards) < self.n and self.upper_bound(rewards) < threshold


@dataclass(frozen=True)
class ReplayResult:
    examples_scored: int  # validation examples generated, over all candidates
    examples_total: int  # what the exhaustive search generated
    same_top_k: bool  # the racing search's top K (as a set) equals the exhaustive one's
    overlap: float  # the share of the exhaustive top K that the racing search kept

    @property
    def saved(self) -> float:
        return 1 - self.examples_scored / self.examples_total


def replay(rewards: Sequence[Sequence[float]], race: Race) -> ReplayResult:
    """Race over stored per-example rewards (candidate x example, in scoring order), as a live search would."""
    finished: list[tuple[float, int]] = []
    scored = 0
    for idx, row in enumerate(rewards):
        threshold = race.threshold([s for s, _ in finished])
        seen: list[float] = []
        for lo in range(0, len(row), race.chunk):
            seen.extend(row[lo : lo + race.chunk])
            if race.should_stop(seen, threshold):
                break
        scored += len(seen)
        if len(seen) == len(row):
            finished.append((sum(row) / len(row), idx))
    full = sorted(((sum(r) / len(r), i) for i, r in enumerate(rewards)), key=lambda t: (-t[0], t[1]))
    raced = sorted(finished, key=lambda t: (-t[0], t[1]))

    def top(ranked: list[tuple[float, int]]) -> set[int]:
        return {i for _, i in ranked[: race.k]}

    kept = len(top(full) & top(raced)) / len(top(full))
    return ReplayResult(scored, sum(len(r) for r in rewards), top(full) == top(raced), kept)


def simulate_drop_rate(race: Race, correct: int, trials: int = 2000, seed: int = 0) -> float:
    """How often a candidate as good as the K-th is dropped: it answers `correct` of the n validation
    examples (reward 1, else 0), the threshold is its own final score (a tie goes on), and the examples
    come in random orders. A valid rule stays at or below race.delta."""
    if not 0 <= correct <= race.n:
        raise ThicketsError(f"correct must be between 0 and {race.n}, got {correct}")
    rng = random.Random(seed)
    row = [1.0] * correct + [0.0] * (race.n - correct)
    threshold = correct / race.n
    drops = 0
    for _ in range(trials):
        rng.shuffle(row)
        for hi in range(race.chunk, race.n, race.chunk):
            if race.should_stop(row[:hi], threshold):
                drops += 1
                break
    return drops / trials


def replay_many(rewards: Sequence[Sequence[float]], race: Race, orders: int = 200, seed: int = 0) -> dict[str, Any]:
    """Replay with the validation examples (and candidates) in many random orders: agreement and savings."""
    rng = random.Random(seed)
    n_ex = len(rewards[0])
    same, saved, overlap = 0, [], []
    for _ in range(orders):
        perm = list(range(n_ex))
        rng.shuffle(perm)
        cands = list(range(len(rewards)))
        rng.shuffle(cands)
        result = replay([[rewards[c][e] for e in perm] for c in cands], race)
        same += result.same_top_k
        saved.append(result.saved)
        overlap.append(result.overlap)
    return {
        "mode": race.mode,
        "delta": race.delta,
        "k": race.k,
        "orders": orders,
        "same_top_k": same / orders,
        "top_k_overlap": sum(overlap) / orders,
        "generation_saved": sum(saved) / orders,
    }
