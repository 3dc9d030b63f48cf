"""Selection and voting: which candidates are the experts, and what K of them answer together.

Ranking is by validation score, then validation accuracy, then the earlier candidate; a candidate
that racing stopped early comes last. In a vote, answers that could not be extracted do not
vote; the vote key with the most votes wins, and a tie goes to the key of the best-ranked
expert among the tied. The vote's answer is that expert's answer, so it is correct exactly when
the winning answer is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from thickets.randopt.store import Candidate, candidate_model
from thickets.tasks import Score


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: higher validation score, then higher validation accuracy, then the earlier candidate.
    Candidates that racing stopped early come last: their scores cover part of validation only."""
    return sorted(candidates, key=lambda c: (not c.complete, -c.score, -c.accuracy, c.idx))


def rank_on_task(
    candidates: Sequence[Candidate], by_model: Mapping[str, Mapping[str, float]], task: str
) -> list[Candidate]:
    """Candidates best first on one task of a multi-task run: that task's validation score, then the
    overall score, then the earlier candidate."""
    return sorted(candidates, key=lambda c: (-by_model.get(candidate_model(c.idx), {}).get(task, 0.0), -c.score, c.idx))


def majority_vote(ranked_scores: Sequence[Score]) -> Score | None:
    """The winning answer among experts listed best first; None when no expert gave an answer."""
    keys = [s.vote_key for s in ranked_scores if s.vote_key is not None]
    if not keys:
        return None
    counts = Counter(keys)
    top = max(counts.values())
    winner = next(k for k in keys if counts[k] == top)  # first in rank order among the tied
    return next(s for s in ranked_scores if s.vote_key == winner)


def vote_outcomes(per_expert: Sequence[Mapping[int, Score]], n: int) -> list[Score | None]:
    """The vote's answer to each of n questions (None where no expert gave one)."""
    return [majority_vote([scores[ex] for scores in per_expert]) for ex in range(n)]


def vote_accuracy(per_expert: Sequence[Mapping[int, Score]], n: int) -> tuple[float, float]:
    """(accuracy, fraction of questions with any extractable answer) of the majority vote."""
    won = vote_outcomes(per_expert, n)
    return sum(bool(w and w.correct) for w in won) / n, sum(w is not None for w in won) / n


def paired_gain(correct: Sequence[bool], baseline: Sequence[bool]) -> dict[str, float | list[float]]:
    """Accuracy gain over the base on the same questions, with a 95% normal interval of the paired difference."""
    n = len(correct)
    d = [int(a) - int(b) for a, b in zip(correct, baseline)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return {"gain": mean, "ci95": [mean - half, mean + half]}
