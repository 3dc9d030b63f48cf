import json

import pytest

from thickets.analysis.reports import ensemble
from thickets.errors import ThicketsError
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.randopt.vote import majority_vote, vote_accuracy
from thickets.tasks.base import Score


def S(key, correct=False):
    return Score(None if key is None else f"ans {key}", key, float(correct), correct)


def test_majority_wins_and_unextractable_answers_do_not_vote():
    won = majority_vote([S("7"), S(None), S(None), S(None), S("5", True), S("5", True)])
    assert won.vote_key == "5" and won.correct


def test_a_tie_goes_to_the_best_ranked_expert():
    assert majority_vote([S("3"), S("4", True), S("4", True), S("3")]).vote_key == "3"
    assert majority_vote([S(None), S("4", True), S("3")]).vote_key == "4"


def test_no_answer_at_all_means_no_vote():
    assert majority_vote([S(None), S(None)]) is None


def test_vote_accuracy_counts_correct_and_answered_questions():
    experts = [
        {0: S("1", True), 1: S(None), 2: S("9")},
        {0: S("1", True), 1: S(None), 2: S("8", True)},
        {0: S("2"), 1: S(None), 2: S("8", True)},
    ]
    assert vote_accuracy(experts, 3) == (2 / 3, 2 / 3)


def test_ensemble_reports_base_best_single_and_each_k_on_the_same_test_split(tiny_engine, tiny_model_dir, tmp_path):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=5, sigmas=(0.1,), val_size=4, max_new_tokens=5, batch_size=8
    )
    search(config, tmp_path, engine=tiny_engine, progress=False)
    report = ensemble(tmp_path, [1, 3], 6, engine=tiny_engine, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    assert report["task"] == "toy" and report["test_size"] == 6
    assert {"accuracy", "format_rate"} <= set(report["base"])
    assert [e["k"] for e in report["ensembles"]] == [1, 3]
    assert report["ensembles"][0]["accuracy"] == report["best_single"]["accuracy"]
    assert [e["rank"] for e in report["experts"]] == [1, 2, 3]
    assert report["experts"][0]["accuracy"] == report["best_single"]["accuracy"]
    assert "| top-3 vote | 3 |" in (tmp_path / "report.md").read_text()
    assert report["ensembles"][1]["vs_base"]["gain"] == pytest.approx(
        report["ensembles"][1]["accuracy"] - report["base"]["accuracy"]
    )

    # test answers are stored: a second call with another K generates nothing
    class NoEngine:
        def __getattr__(self, name):
            raise AssertionError("the engine was used although every answer was stored")

    again = ensemble(tmp_path, [2], 6, engine=NoEngine(), progress=False)
    assert again["base"] == report["base"]


def test_k_larger_than_the_population_is_refused(tiny_engine, tiny_model_dir, tmp_path):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=2, sigmas=(0.1,), val_size=2, max_new_tokens=3
    )
    search(config, tmp_path, engine=tiny_engine, progress=False)
    with pytest.raises(ThicketsError, match="top-k 5 is more than the 2 candidates"):
        ensemble(tmp_path, [5], 4, engine=tiny_engine, progress=False)
    assert not (tmp_path / "report.json").exists()


def test_paired_gain_and_its_interval():
    from thickets.randopt.vote import paired_gain

    g = paired_gain([True, True, False, True], [False, True, False, False])
    assert g["gain"] == 0.5 and g["ci95"][0] < 0.5 < g["ci95"][1]
    assert paired_gain([True] * 3, [True] * 3) == {"gain": 0.0, "ci95": [0.0, 0.0]}


def test_low_rank_experts_answer_the_test_split_together_as_they_would_alone(tiny_engine, tiny_model_dir, tmp_path):
    import sqlite3

    from thickets.randopt.store import DB_NAME

    def test_rows(run_dir):
        with sqlite3.connect(run_dir / DB_NAME) as con:
            return con.execute(
                "SELECT model, example, completion FROM results WHERE split='test' ORDER BY model, example"
            ).fetchall()

    common = dict(model=str(tiny_model_dir), task="toy", population=5, sigmas=(0.1,), val_size=4, max_new_tokens=5)
    common.update(strategy="lowrank", rank=2, batch_size=8)
    reports = {}
    for m in (1, 3):
        run = tmp_path / f"m{m}"
        search(SearchConfig(**common, population_batch=m), run, engine=tiny_engine, progress=False)
        calls = {"n": 0}
        original = tiny_engine.generate_population

        def counting(*a, original=original, calls=calls, **kw):
            calls["n"] += 1
            return original(*a, **kw)

        tiny_engine.generate_population = counting
        try:
            reports[m] = ensemble(run, [1, 3], 6, engine=tiny_engine, progress=False)
        finally:
            del tiny_engine.generate_population
        assert (calls["n"] > 0) == (m > 1)  # the experts' test answers came from a population batch
    assert test_rows(tmp_path / "m1") == test_rows(tmp_path / "m3")
    assert reports[1]["ensembles"] == reports[3]["ensembles"] and reports[1]["experts"] == reports[3]["experts"]


def test_an_exact_adaptive_ensemble_answers_as_the_full_vote_asking_fewer_experts(
    tiny_engine, tiny_model_dir, tmp_path
):
    """Two copies of one run: the adaptive one's later experts answer only the undecided questions (fewer
    stored answers, counted in the report), and every K's vote is the full vote's; vote-replay on the
    full run counts the same experts asked."""
    import shutil

    from thickets.analysis.vote_replay import vote_replay
    from thickets.randopt.store import RunStore, candidate_model
    from thickets.randopt.vote import rank

    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=7, sigmas=(0.002,), val_size=4, max_new_tokens=3, batch_size=8
    )
    search(config, tmp_path / "full", engine=tiny_engine, progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "adaptive")
    full = ensemble(tmp_path / "full", [3, 7], 20, engine=tiny_engine, progress=False)
    fast = ensemble(tmp_path / "adaptive", [3, 7], 20, engine=tiny_engine, progress=False, adaptive="exact")
    for f, a in zip(full["ensembles"], fast["ensembles"]):
        assert a["accuracy"] == f["accuracy"] and a["format_rate"] == f["format_rate"]
        assert f["experts_asked"] == f["k"] and a["experts_asked"] <= a["k"]
    assert fast["ensembles"][1]["experts_asked"] < 7  # near-identical experts agree: most questions stop early
    with RunStore.open(tmp_path / "adaptive", write=False) as store:
        ranked = [c for c in rank(store.candidates()) if c.complete]
        answered = [len(store.scores(candidate_model(c.idx), "test")) for c in ranked[:7]]
    assert answered[0] == 20 and answered == sorted(answered, reverse=True) and answered[-1] < 20
    assert [e["answered"] for e in fast["experts"]] == answered
    replay = vote_replay(tmp_path / "full", [3, 7])
    by = {(r["k"], r["rule"]): r for r in replay["rows"]}
    for k, e in zip([3, 7], fast["ensembles"]):
        assert by[(k, "exact")]["experts_asked"] == pytest.approx(e["experts_asked"])
        assert by[(k, "exact")]["agreement"] == 1.0 and by[(k, "off")]["experts_asked"] == k
        assert 0 <= by[(k, "beta")]["agreement"] <= 1 and 1 <= by[(k, "beta")]["experts_asked"] <= k
    assert (tmp_path / "full" / "vote_replay.png").stat().st_size > 1000
    with pytest.raises(ThicketsError, match="unknown adaptive rule"):
        ensemble(tmp_path / "full", [3], 20, engine=tiny_engine, progress=False, adaptive="maybe")
