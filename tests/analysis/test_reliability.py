"""The split-half reliability of a run's validation score (issue 30), from stored results only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thickets.analysis.reliability import reliability_line, spearman_brown, split_half
from thickets.randopt.config import SearchConfig
from thickets.randopt.store import RunStore
from thickets.tasks.base import Example, Score, ScoredExample


def _run(tmp_path, rewards: list[list[float]]):
    """A run folder whose candidate i scored rewards[i][p] on validation position p (no model involved)."""
    n_val = len(rewards[0])
    config = SearchConfig(task="products", model="m", population=len(rewards), val_size=n_val, sigmas=(0.001,))
    with RunStore.open(tmp_path, config) as store:
        for i, row in enumerate(rewards):
            rows = [
                ScoredExample(p, Example(f"q{p}", "?"), "c", Score("1", "1", r, r >= 1.0)) for p, r in enumerate(row)
            ]
            store.add_candidate(i, 100 + i, 0.001, rows, 1.0)
    return tmp_path


def test_candidates_that_differ_only_in_quality_are_perfectly_reliable(tmp_path):
    quality = [0.1, 0.4, 0.6, 0.9]
    rel = split_half(_run(tmp_path, [[q] * 8 for q in quality]))
    assert rel["half_correlation"] == pytest.approx(1.0) and rel["reliability"] == pytest.approx(1.0)
    assert rel["val_size_for_target"] is None and "1.00" in reliability_line(rel)


def test_the_statistics_are_the_formulas_on_a_constructed_run(tmp_path):
    rng = np.random.default_rng(0)
    quality = np.linspace(0.2, 0.8, 12)
    rewards = [[float(rng.random() < q) for _ in range(40)] for q in quality]
    rel = split_half(_run(tmp_path, rewards))
    a = [np.mean(r[0::2]) for r in rewards]
    b = [np.mean(r[1::2]) for r in rewards]
    r = float(np.corrcoef(a, b)[0, 1])
    assert rel["half_correlation"] == pytest.approx(r)
    assert rel["reliability"] == pytest.approx(2 * r / (1 + r))
    need = rel["val_size_for_target"]
    if 0 < rel["reliability"] < 0.8:  # the size that reaches the target, and no smaller one does
        assert spearman_brown(rel["reliability"], need / 40) >= 0.8 - 1e-9
        assert spearman_brown(rel["reliability"], (need - 1) / 40) < 0.8
    assert math.isclose(spearman_brown(0.5, 2), 2 / 3)


def test_noise_alone_is_unreliable_and_too_little_to_measure_says_so(tmp_path):
    # the halves disagree exactly: a candidate good on the even questions is bad on the odd ones
    rewards = [[1.0, 0.0] * 4, [0.0, 1.0] * 4, [1.0, 0.0] * 4, [0.0, 1.0] * 4]
    rel = split_half(_run(tmp_path / "a", rewards))
    assert rel["half_correlation"] == pytest.approx(-1.0) and rel["reliability"] < 0
    assert "luck of the questions" in reliability_line(rel)
    assert split_half(_run(tmp_path / "b", [[0.5] * 8] * 4)) is None  # no spread
    assert "not enough" in reliability_line(None)
