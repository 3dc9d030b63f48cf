"""What the population buys (issue 30): best validation score and top-K vote test accuracy against N, from a
run's stored results only."""

from __future__ import annotations

import numpy as np
import pytest

from thickets.analysis.population import grid, plot_population, population_curve, what_to_run
from thickets.randopt.config import SearchConfig
from thickets.randopt.store import BASE, RunStore, candidate_model
from thickets.randopt.vote import vote_accuracy
from thickets.tasks.base import Example, Score, ScoredExample


def _rows(values: list[float]) -> list[ScoredExample]:
    return [
        ScoredExample(p, Example(f"q{p}", "?"), "c", Score(str(int(v)), str(int(v)), v, v >= 1))
        for p, v in enumerate(values)
    ]


def _run(tmp_path, val: list[float], with_test: set[int]):
    """Candidate i scores val[i] on every one of 4 validation questions; test answers of those in with_test:
    right on question p exactly when i > p (so the vote's accuracy is a known function of who votes)."""
    config = SearchConfig(task="products", model="m", population=len(val), val_size=4, sigmas=(0.001,))
    with RunStore.open(tmp_path, config) as store:
        for i, v in enumerate(val):
            store.add_candidate(i, 100 + i, 0.001, _rows([v] * 4), 1.0)
        store.add_results(BASE, "test", _rows([0.0] * 6))
        for i in with_test:
            store.add_results(candidate_model(i), "test", _rows([float(i > p) for p in range(6)]))
    return tmp_path


def test_the_curves_are_the_running_best_and_the_vote_of_each_prefixs_top_k(tmp_path):
    val = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.6]
    curve = population_curve(_run(tmp_path, val, set(range(8))), top_k=3)
    assert [r["n"] for r in curve["rows"]] == grid(8) == [4, 8]
    assert [r["best_val_prefix"] for r in curve["rows"]] == [max(val[:4]), max(val)]
    for r in curve["rows"]:  # the bootstrap best lies within the population's scores, its band around its mean
        lo, hi = r["best_val_boot_90"]
        assert min(val) <= lo <= r["best_val_boot_mean"] <= hi <= max(val)
    # each prefix's top 3 by validation score vote; candidate i is right on question p exactly when i > p
    for r in curve["rows"]:
        top = sorted(range(r["n"]), key=lambda i: -val[i])[:3]
        experts = [{p: Score(str(int(i > p)), str(int(i > p)), float(i > p), i > p) for p in range(6)} for i in top]
        assert r["test_vote"] == pytest.approx(vote_accuracy(experts, 6)[0])
    assert curve["base_test"] == 0.0 and what_to_run(curve, tmp_path) is None
    assert plot_population(curve, tmp_path / "p.png").stat().st_size > 0


def test_where_test_answers_are_missing_the_curve_stops_and_says_what_to_run(tmp_path):
    val = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.95]
    curve = population_curve(_run(tmp_path, val, {0, 1, 2, 3}), top_k=3)
    assert curve["rows"][0]["test_vote"] is not None and curve["rows"][1]["test_vote"] is None
    assert curve["missing"] == {"n": 8, "candidates": [7, 6]}
    note = what_to_run(curve, tmp_path)
    assert "candidates 7, 6 have no stored test answers" in note
    assert f"thickets transfer --run-dir {tmp_path} --sample 8 --test-size 6` answers the other 4" in note
    assert np.isfinite(curve["rows"][1]["best_val_boot_mean"])
    # the bootstrap would lean towards the answered candidates: given nowhere, even at N = 4
    assert all(r["test_vote_boot_mean"] is None for r in curve["rows"])


def test_the_bootstrap_needs_exactly_the_candidates_that_can_reach_a_subsets_top_k(tmp_path):
    """Candidate c is in the top K of some subset of N when N - K others rank below it: for N = 8 of 8 and
    K = 3 the best 3, for N = 4 the best 7. The worst candidate (val 0.1, idx 0) never votes at N = 4."""
    val = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.6]
    all_but_worst = population_curve(_run(tmp_path / "a", val, set(range(1, 8))), top_k=3)
    assert all(r["test_vote_boot_mean"] is not None for r in all_but_worst["rows"])
    all_but_two = population_curve(_run(tmp_path / "b", val, set(range(1, 8)) - {2}), top_k=3)  # idx 2: 7th best
    four, whole = all_but_two["rows"]
    assert four["test_vote_boot_mean"] is None and whole["test_vote_boot_mean"] is not None


def test_the_bootstrap_vote_is_the_expected_vote_of_a_random_subset_of_n(tmp_path):
    from itertools import combinations

    val = [0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.6]
    curve = population_curve(_run(tmp_path, val, set(range(8))), top_k=3)

    def vote(members) -> float:
        top = sorted(members, key=lambda i: -val[i])[:3]
        experts = [{p: Score(str(int(i > p)), str(int(i > p)), float(i > p), i > p) for p in range(6)} for i in top]
        return vote_accuracy(experts, 6)[0]

    four, whole = curve["rows"]
    exact = [vote(s) for s in combinations(range(8), 4)]  # all 70 subsets of 4, each equally likely
    assert four["test_vote_boot_mean"] == pytest.approx(np.mean(exact), abs=0.03)
    lo, hi = four["test_vote_boot_90"]
    assert min(exact) <= lo <= four["test_vote_boot_mean"] <= hi <= max(exact) and lo < hi
    # a subset of the whole population is the population: its vote, with no spread
    assert (
        whole["test_vote_boot_mean"] == pytest.approx(whole["test_vote"])
        and whole["test_vote_boot_90"] == [pytest.approx(whole["test_vote"])] * 2
    )
