"""Does the selection transfer? (issue 30): on a constructed run whose test accuracy is a known function of
the validation score, each statistic comes out as it must, and nothing is generated when it is stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thickets.analysis.transfer import TransferConfig, kendall, spearman, transfer
from thickets.cli.commands import main
from thickets.randopt.config import SearchConfig
from thickets.randopt.store import BASE, RunStore, candidate_model
from thickets.tasks import get_task
from thickets.tasks.base import Score, ScoredExample
from thickets.tasks.splits import make_splits

N_TEST = 20


def _scored(examples, rights: list[bool], reward: float | None = None) -> list[ScoredExample]:
    return [
        ScoredExample(p, ex, "c", Score("1", "1", float(ok) if reward is None else reward, ok))
        for p, (ex, ok) in enumerate(zip(examples, rights))
    ]


def _run(tmp_path, n: int = 10):
    """Candidate i scores 0.1 i on validation and is right on the first i + 2 of 20 test questions: test
    accuracy = 0.5 x validation + 0.1 exactly. The model "m" does not exist: nothing can be generated."""
    config = SearchConfig(task="products", model="m", population=n, val_size=4, sigmas=(0.001,))
    val, test = make_splits(get_task("products"), 0, 4, N_TEST)
    with RunStore.open(tmp_path, config) as store:
        store.add_results(BASE, "val", _scored(val, [False] * 4, reward=0.05))
        store.add_results(BASE, "test", _scored(test, [p < 1 for p in range(N_TEST)]))
        for i in range(n):
            store.add_candidate(i, 1000 + i, 0.001, _scored(val, [False] * 4, reward=0.1 * i), 1.0)
            store.add_results(candidate_model(i), "test", _scored(test, [p < i + 2 for p in range(N_TEST)]))
    return tmp_path


def test_each_statistic_is_what_the_construction_makes_it(tmp_path):
    report = transfer(TransferConfig(run_dir=str(_run(tmp_path)), sample=3, top_k=3, test_size=N_TEST), progress=False)
    assert report["candidates"] == 6 and len(report["sampled"]) == 3
    assert report["spearman"] == pytest.approx(1.0) and report["kendall"] == pytest.approx(1.0)
    assert report["slope"] == pytest.approx(0.5)
    assert report["top1_test"] == pytest.approx(0.55) and report["base_test"] == pytest.approx(0.05)
    assert report["topk_test_mean"] == pytest.approx((0.55 + 0.5 + 0.45) / 3)
    # a random candidate: the drawn ones only (candidate i is right on i + 2 of 20), never the top K
    assert all(i < 7 for i in report["sampled"])
    assert report["random_test"] == pytest.approx(np.mean([(i + 2) / 20 for i in report["sampled"]]))
    assert report["top1_val_gain"] == pytest.approx(0.9 - 0.05)
    assert report["surviving_share"] == pytest.approx(0.5 / 0.85)
    assert json.loads((tmp_path / "transfer.json").read_text())["slope"] == pytest.approx(0.5)


def test_rank_correlations_against_their_definitions():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x[::-1]) == pytest.approx(-1.0) and kendall(x, x[::-1]) == pytest.approx(-1.0)
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0])  # two swapped pairs: 8 concordant, 2 discordant of 10
    assert kendall(x, y) == pytest.approx(0.6)
    assert spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))
    ties = np.array([1.0, 1.0, 2.0, 2.0, 3.0])  # tau-b with ties in one variable
    assert kendall(x, ties) == pytest.approx(8 / np.sqrt(10 * 8))


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = _run(tmp_path, n=2)
    before = (run / "thickets.sqlite").read_bytes()
    for argv, message in (
        (["--sample", "0"], "--sample must be a number from 1"),
        (["--test-size", str(10**7)], "--test-size must be a number from 1"),
        ([], "transfer needs 3 or more"),
    ):
        assert main(["transfer", "--run-dir", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (run / "thickets.sqlite").read_bytes() == before and not (run / "transfer.json").exists()
