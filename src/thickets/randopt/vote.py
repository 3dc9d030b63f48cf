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

from thickets.errors import ThicketsError
from thickets.randopt.store import Candidate, candidate_model
from thickets.tasks import Score


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: higher validation score, then higher validation accuracy, then the earlier candidate.
    Candidates that racing stopped early come last: their scores cover part of validation only."""
    return sorted(candidates, key=lambda c: (not c.complete, -c.score, -c.accuracy, c.idx))


def fully_scored(
    candidates: Sequence[Candidate], need: int = 0, where: object = "the run", what: str = ""
) -> list[Candidate]:
    """The fully scored candidates, best first: the ones that may answer in a vote (racing's early-stopped
    ones may not). Refused in one line when there are fewer than `need` ("top-k N", or `what`)."""
    ranked = [c for c in rank(candidates) if c.complete]
    if need > len(ranked):
        what = what or f"top-k {need}"
        raise ThicketsError(f"{what} is more than the {len(ranked)} candidates fully scored in {where}")
    return ranked


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


#: how an adaptive vote decides it may stop asking experts: never (ask all K), when the leader can no
#: longer be overtaken (the answer never differs from the full vote's), or when a Beta posterior says the
#: leader leads the runner-up with probability at least BETA_CONFIDENCE (Adaptive-Consistency's rule;
#: may differ from the full vote)
ADAPTIVE_RULES = ("off", "exact", "beta")
BETA_CONFIDENCE = 0.95


def decided(ranked_scores: Sequence[Score], k: int, rule: str = "exact") -> bool:
    """Whether asking the remaining k - len(ranked_scores) experts (answers in rank order so far) can
    still change the vote (the exact rule), or is unlikely to (beta). Unextractable answers do not vote;
    a tie goes to the key seen first in rank order, so an unseen key loses its ties to every seen one."""
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"unknown adaptive rule {rule!r}")
    left = k - len(ranked_scores)
    if left <= 0:
        return True
    if rule == "off":
        return False
    keys = [s.vote_key for s in ranked_scores if s.vote_key is not None]
    if not keys:
        return False
    counts = Counter(keys)
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    top = max(counts.values())
    leader = next(key for key in keys if counts[key] == top)
    if rule == "beta":
        runner_up = max((n for key, n in counts.items() if key != leader), default=0)
        return beta_lead_probability(top, runner_up) >= BETA_CONFIDENCE
    # every rival (an unseen key: 0 votes, seen after all) ends with at most its votes plus all that are left
    rivals = [(n, first[key]) for key, n in counts.items() if key != leader] + [(0, len(keys))]
    return all(n + left < top or (n + left == top and first[leader] < at) for n, at in rivals)


def beta_lead_probability(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1): how sure a uniform prior over the two leading
    answers' shares is that the leader has the larger one. Exact for integer counts, through the binomial
    identity I_x(a, b) = P(Binomial(a + b - 1, x) >= a)."""
    a, b = leader + 1, runner_up + 1
    n = a + b - 1
    return float(sum(math.comb(n, i) for i in range(a)) / 2**n)


def adaptive_vote(answers: Sequence[Score], k: int, rule: str = "exact") -> tuple[Score | None, int]:
    """(the vote's answer, experts asked) when experts answer in rank order and asking stops once the
    rule says the vote is decided; `answers` holds the K experts' answers, best first."""
    for asked in range(1, k + 1):
        if decided(answers[:asked], k, rule):
            return majority_vote(answers[:asked]), asked
    return majority_vote(answers[:k]), k


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
