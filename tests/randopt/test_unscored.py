"""A row without a verdict (the scorer failed twice) is stored as unscored, counted, and left out of the
candidate's means, so a scorer's failure never ranks a candidate down (issue 25)."""

from __future__ import annotations

from thickets.randopt.config import SearchConfig
from thickets.randopt.store import RunStore
from thickets.tasks.base import Example, Score, ScoredExample


def _rows(scores: list[Score]) -> list[ScoredExample]:
    return [ScoredExample(i, Example(f"q{i}", f"q{i}?"), "c", s) for i, s in enumerate(scores)]


def test_unscored_rows_are_stored_counted_and_out_of_the_means(tmp_path):
    config = SearchConfig(task="products", model="m", population=2, val_size=4, sigmas=(0.001,))
    judged = [Score("1", "1", 1.0, True), Score("2", "2", 0.0, False), Score("3", "3", 1.0, True)]
    failed = Score("4", "4", 0.0, False, unscored=True)
    with RunStore.open(tmp_path, config) as store:
        cand = store.add_candidate(0, 11, 0.001, _rows(judged + [failed]), 1.0)
        store.add_results("base", "val", _rows(judged + [Score("4", "4", 1.0, True)]))
    assert cand.accuracy == 2 / 3 and cand.score == 2 / 3 and cand.complete
    with RunStore.open(tmp_path, write=False) as store:
        (stored,) = store.candidates()
        assert stored.accuracy == 2 / 3
        assert store.scores("cand:0", "val")[3].unscored
        assert not store.scores("base", "val")[3].unscored
        assert store.unscored() == {"val": 1}
