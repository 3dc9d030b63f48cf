"""Which of the experts' answers to the train split a distilled model learns from.

A trace is one completion of one train question by one expert (greedy, or one of several samples).
Where the task can check an answer ("gold" mode), a trace is kept when it is correct; where it
cannot (a prompts-only task scored by a user's reward: "vote" mode), when its answer agrees with the
top-K experts' majority vote on that question (their greedy answers, or all their samples). Either
way at most `max_per_question` traces of a question are kept, the best-ranked experts' first, and a
question's traces never repeat the same text: the fine-tune would only weigh it twice.

Across rounds, a trace once kept stays kept: each round judges only its own experts' traces (in vote
mode, by their vote alone), so a later round adds traces but never drops what an earlier one kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thickets.errors import ThicketsError
from thickets.tasks import Score, Task

MODES = ("auto", "gold", "vote")


@dataclass(frozen=True)
class Trace:
    example_id: str
    expert_rank: int  # 1 = the best expert on validation
    sample: int  # 0 for a greedy answer
    completion: str
    score: Score


def mode_for(task: Task, asked: str) -> str:
    """'gold' when the task verifies answers itself, else 'vote'; an explicit choice is checked."""
    if asked not in MODES:
        raise ThicketsError(f"unknown trace filter {asked!r}; use {', '.join(MODES)}")
    if asked == "auto":
        return "vote" if task.needs_reward else "gold"
    if asked == "gold" and task.needs_reward:
        raise ThicketsError(f"task {task.name} has no answers to check traces against; use --filter vote")
    return asked


def vote_keys(traces: Iterable[Trace]) -> dict[str, str]:
    """Each question's winning vote key among its traces (most votes; ties to the best-ranked expert's)."""
    by_question: dict[str, list[Trace]] = {}
    for t in traces:
        by_question.setdefault(t.example_id, []).append(t)
    winners: dict[str, str] = {}
    for q, ts in by_question.items():
        ordered = sorted(ts, key=lambda t: (t.expert_rank, t.sample))
        keys = [t.score.vote_key for t in ordered if t.score.vote_key is not None]
        if keys:
            counts = Counter(keys)
            top = max(counts.values())
            winners[q] = next(k for k in keys if counts[k] == top)
    return winners


def keep(
    traces: Sequence[Trace],
    mode: str,
    max_per_question: int,
    earlier: Sequence[Trace] = (),
    judged: Sequence[Trace] = (),
) -> list[Trace]:
    """The traces to train on besides `earlier` (those kept in earlier rounds, which stay whatever these
    experts answer, do not vote, and count towards a question's M and its texts), grouped by question in
    first-seen order, best-ranked expert first. `judged` (the student's own, with --on-policy) are kept by
    the same rule after the experts' but never vote."""
    if mode == "vote":
        winners = vote_keys(traces)
        if traces and not any(t.score.vote_key is not None for t in [*earlier, *traces]):
            raise ThicketsError("no trace has an answer that can vote: the task gives no vote keys; use gold mode")

        def good(t: Trace) -> bool:
            return t.score.vote_key is not None and winners.get(t.example_id) == t.score.vote_key
    elif mode == "gold":

        def good(t: Trace) -> bool:
            return t.score.correct
    else:
        raise ThicketsError(f"unknown trace filter {mode!r}")
    order = {q: i for i, q in enumerate(dict.fromkeys(t.example_id for t in [*traces, *judged]))}
    kept: list[Trace] = []
    per_question: dict[str, set[str]] = {}
    for t in earlier:
        per_question.setdefault(t.example_id, set()).add(t.completion)
    for t in sorted([*traces, *judged], key=lambda t: (order[t.example_id], t.expert_rank, t.sample)):
        texts = per_question.setdefault(t.example_id, set())
        if good(t) and len(texts) < max_per_question and t.completion not in texts:
            texts.add(t.completion)
            kept.append(t)
    return kept
