"""What the population buys: the best validation score and the top-K vote's test accuracy as functions of
N, from one run's stored results (no generation), so a user sees what doubling N would give.

For N on a doubling grid up to the population: the best validation score among the first N candidates
(the run as it stood then), and its bootstrap over resamples of N candidates from the whole population
(mean and 90% band: what another population of N would likely have found). Where the top K of the first
N candidates all have stored test answers, the vote of those K on the stored test questions; where some
do not, the curve stops there and says which candidates would have to answer. Likewise the vote's
bootstrap: subsets of N candidates drawn without replacement (a candidate voting twice would weigh one
expert double), the vote of each subset's top K; given only where every candidate that can be in some
subset's top K has stored test answers (the best population - N + K: `thickets transfer --sample` with
the population answers them all), since a mean over the subsets that happen to be answerable would
lean towards the candidates `ensemble` already answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.randopt.store import BASE, RunStore, candidate_model
from thickets.randopt.vote import rank, vote_accuracy

#: bootstrap resamples of the population per N (of the validation best; of the test vote, fewer: each is a vote)
RESAMPLES = 400
TEST_RESAMPLES = 200
SEED = 20261206


def grid(total: int, start: int = 4) -> list[int]:
    """N = start, 2 start, 4 start, ... and the whole population."""
    out, n = [], start
    while n < total:
        out.append(n)
        n *= 2
    return out + [total]


def population_curve(run_dir: str | Path, top_k: int = 5) -> dict[str, Any] | None:
    """The curves of a run (None with fewer than 2 fully scored candidates)."""
    with RunStore.open(run_dir, write=False) as store:
        cands = sorted((c for c in store.candidates() if c.complete), key=lambda c: c.idx)
        if len(cands) < 2:
            return None
        test_positions = sorted(store.example_ids("test", BASE))
        tests = {c.idx: store.scores(candidate_model(c.idx), "test") for c in cands}
        base_test = store.scores(BASE, "test")
    scores = np.array([c.score for c in cands])
    answered = {
        c.idx: {i: tests[c.idx][p] for i, p in enumerate(test_positions)}
        for c in cands
        if test_positions and all(p in tests[c.idx] for p in test_positions)
    }
    rng, subsets = np.random.default_rng(SEED), np.random.default_rng(SEED + 1)  # the test's own draws
    rows, missing = [], None
    ranked, q = rank(cands), len(test_positions)
    for n in grid(len(cands), min(4, len(cands))):
        boot = scores[rng.integers(0, len(cands), size=(RESAMPLES, n))].max(axis=1)
        row: dict[str, Any] = {
            "n": n,
            "best_val_prefix": float(scores[:n].max()),
            "best_val_boot_mean": float(boot.mean()),
            "best_val_boot_90": [float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))],
            "test_vote": None,
            "test_vote_boot_mean": None,
            "test_vote_boot_90": None,
        }
        top = rank(cands[:n])[:top_k]
        if test_positions and missing is None:
            lacking = [c.idx for c in top if c.idx not in answered]
            if lacking:
                missing = {"n": n, "candidates": lacking}
            else:
                row["test_vote"] = _vote(top, answered, len(test_positions))
        # a candidate is in the top K of some subset of N exactly when at least N - K others rank below it:
        # the best len - N + K of the population; every one of them must have answered
        if test_positions and all(c.idx in answered for c in ranked[: len(cands) - n + top_k]):
            votes = [
                _vote(rank([cands[i] for i in subsets.choice(len(cands), n, replace=False)])[:top_k], answered, q)
                for _ in range(TEST_RESAMPLES)
            ]
            row["test_vote_boot_mean"] = float(np.mean(votes))
            row["test_vote_boot_90"] = [float(np.quantile(votes, 0.05)), float(np.quantile(votes, 0.95))]
        rows.append(row)
    base_acc = float(np.mean([base_test[p].correct for p in test_positions])) if test_positions else None
    return {
        "top_k": top_k,
        "population": len(cands),
        "test_size": len(test_positions),
        "base_test": base_acc,
        "rows": rows,
        "missing": missing,
        "unanswered": len({c.idx for c in cands} - set(answered)),
    }


def _vote(experts: list[Any], answered: dict[int, dict[int, Any]], questions: int) -> float:
    """The test accuracy of these candidates' vote, from their stored test answers."""
    return vote_accuracy([answered[c.idx] for c in experts], questions)[0]


def what_to_run(curve: dict[str, Any], run_dir: str | Path) -> str | None:
    """One line naming what the test curves lack and the command that fills them, or None when they are whole."""
    if not curve["test_size"]:
        return f"no test answers stored: `thickets ensemble --run-dir {run_dir}` for the test curve"
    if curve["missing"] is None and curve.get("unanswered", 0) == 0:
        return None
    fill = (
        f"`thickets transfer --run-dir {run_dir} --sample {curve['population']} --test-size {curve['test_size']}` "
        f"answers the other {curve.get('unanswered', 0)} candidates on the same questions"
    )
    m = curve["missing"]
    if m is None:
        return f"the test curve's bootstrap needs every candidate's test answers: {fill}"
    return (
        f"the test curve stops before N = {m['n']}: candidates {', '.join(map(str, m['candidates']))} have no "
        f"stored test answers; {fill}"
    )


def plot_population(curve: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    n = [r["n"] for r in curve["rows"]]
    top.plot(n, [r["best_val_prefix"] for r in curve["rows"]], "o-", label="best of the first N (this run)")
    top.plot(n, [r["best_val_boot_mean"] for r in curve["rows"]], "s--", label="best of N, bootstrap mean")
    low = [r["best_val_boot_90"][0] for r in curve["rows"]]
    high = [r["best_val_boot_90"][1] for r in curve["rows"]]
    top.fill_between(n, low, high, alpha=0.2, label="bootstrap 90%")
    top.set_ylabel("best validation score")
    top.legend(fontsize=8)
    pts = [(r["n"], r["test_vote"]) for r in curve["rows"] if r["test_vote"] is not None]
    if pts:
        bottom.plot(*zip(*pts), "o-", color="C2", label=f"top-{curve['top_k']} vote of the first N (this run)")
    boot = [r for r in curve["rows"] if r.get("test_vote_boot_mean") is not None]
    if boot:
        nb = [r["n"] for r in boot]
        bottom.plot(nb, [r["test_vote_boot_mean"] for r in boot], "s--", color="C3", label="vote, bootstrap mean")
        lo, hi = zip(*(r["test_vote_boot_90"] for r in boot))
        bottom.fill_between(nb, lo, hi, color="C3", alpha=0.2, label="bootstrap 90%")
    if curve["base_test"] is not None:
        bottom.axhline(curve["base_test"], color="black", ls="--", label="base")
    bottom.set_ylabel(f"test accuracy ({curve['test_size']} questions)")
    bottom.set_xlabel("population N")
    bottom.set_xscale("log", base=2)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no stored test answers", ha="center", va="center", transform=bottom.transAxes)
    return save(fig, path)
