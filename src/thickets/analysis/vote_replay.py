"""How many experts would an adaptive vote have asked, and would it have answered the same? Replayed on a
finished run's stored test answers.

The rule that decides here (randopt.vote.decided) is the one `thickets ensemble --adaptive` and the
server use, so the replayed figures are what those would do on these questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thickets.analysis.plots import pyplot, save
from thickets.errors import ThicketsError
from thickets.randopt.store import RunStore, candidate_model
from thickets.randopt.vote import ADAPTIVE_RULES, adaptive_vote, fully_scored, majority_vote
from thickets.tasks import Score


def stored_test_answers(run_dir: str | Path, k: int) -> list[list[Score]]:
    """Each test question's answers by the run's top-k experts, best first (question x expert): the
    questions every one of them has answered (`thickets ensemble` stores them)."""
    with RunStore.open(run_dir, write=False) as store:
        top = fully_scored(store.candidates(), k, run_dir)[:k]
        per_expert = [store.scores(candidate_model(c.idx), "test") for c in top]
    questions = sorted(set.intersection(*(set(e) for e in per_expert)))
    if not questions:
        raise ThicketsError(
            f"no test question has answers from all top-{k} experts in {run_dir}: run `thickets ensemble "
            f"--run-dir {run_dir} --top-k {k}` first"
        )
    return [[e[q] for e in per_expert] for q in questions]


def replay_votes(answers: Sequence[Sequence[Score]], top_k: Sequence[int]) -> list[dict[str, Any]]:
    """Per K and rule: experts asked per question (mean and histogram), agreement with the full vote's
    answer, and accuracy."""
    out = []
    for k in sorted(set(top_k)):
        full = [majority_vote(list(a[:k])) for a in answers]
        for rule in ADAPTIVE_RULES:
            votes = [adaptive_vote(list(a[:k]), k, rule) for a in answers]
            out.append(
                {
                    "k": k,
                    "rule": rule,
                    "questions": len(answers),
                    "experts_asked": sum(n for _, n in votes) / len(answers),
                    "asked_histogram": dict(sorted(Counter(n for _, n in votes).items())),
                    "agreement": sum(_key(w) == _key(f) for (w, _), f in zip(votes, full)) / len(answers),
                    "accuracy": sum(bool(w and w.correct) for w, _ in votes) / len(answers),
                }
            )
    return out


def _key(s: Score | None) -> str | None:
    return None if s is None else s.vote_key


def vote_replay(run_dir: str | Path, top_k: Sequence[int]) -> dict[str, Any]:
    """The replay's figures for a run (and a plot of experts asked per question at the largest K)."""
    if not top_k or min(top_k) < 1:
        raise ThicketsError(f"top-k values must be at least 1, got {list(top_k)}")
    answers = stored_test_answers(run_dir, max(top_k))
    rows = replay_votes(answers, top_k)
    plot_asked([r for r in rows if r["k"] == max(top_k)], Path(run_dir) / "vote_replay.png")
    return {"run_dir": str(run_dir), "questions": len(answers), "rows": rows}


def plot_asked(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Questions by the number of experts each rule asked (one K)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = rows[0]["k"]
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [n + (i - (len(rows) - 1) / 2) * width for n in range(1, k + 1)]
        ys = [r["asked_histogram"].get(n, 0) for n in range(1, k + 1)]
        label = f"{r['rule']}: {r['experts_asked']:.2f} asked, {r['agreement']:.0%} agree"
        ax.bar(xs, ys, width=width, label=label)
    ax.set_xticks(range(1, k + 1))
    ax.set_xlabel(f"experts asked (of the top {k})")
    ax.set_ylabel(f"test questions (of {rows[0]['questions']})")
    ax.legend(fontsize=8)
    return save(fig, path)
