"""Run folders made by earlier code still resume, ensemble and export, with the scores and weights that code
gave: release 0.1.0's (noise version 1, tests/fixtures/runs/release-0.1.0) and one made with noise version 2
before the relative strategy was added (tests/fixtures/runs/release-0.3-noise2)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from thickets.errors import ThicketsError
from thickets.noise import NOISE_VERSIONS
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.search import search
from thickets.randopt.store import DB_NAME, read_config
from thickets.ship.export import export_candidate, spec_from_recipe

RUNS = Path(__file__).parents[1] / "fixtures" / "runs"
#: each fixture run folder, and the noise version its candidates were made with
FIXTURES = {"release-0.1.0": 1, "release-0.3-noise2": 2}


def _place(fixture: str, model_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fixture run beside a copy of the tiny model under the name it was made with ("model")."""
    shutil.copytree(model_dir, tmp_path / "model")
    (tmp_path / "run").mkdir()
    for name in (DB_NAME, "report.json"):
        shutil.copy(RUNS / fixture / name, tmp_path / "run" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


@pytest.fixture()
def old_run(legacy_tiny_model_dir, tmp_path, monkeypatch):
    return _place("release-0.1.0", legacy_tiny_model_dir, tmp_path, monkeypatch)


@pytest.fixture(params=sorted(FIXTURES))
def fixture_run(request, legacy_tiny_model_dir, tmp_path, monkeypatch):
    """Each fixture run, placed: (its folder, its fixture folder, the noise version it was made with)."""
    run = _place(request.param, legacy_tiny_model_dir, tmp_path, monkeypatch)
    return run, RUNS / request.param, FIXTURES[request.param]


def test_an_old_run_reads_as_the_release_wrote_it(old_run):
    config = read_config(old_run)
    assert config.batching == "split" and config.population == 3 and config.model == "model"
    assert config.noise_version == 1  # the stream release 0.1 made its candidates with


def test_the_noise2_run_reads_as_it_was_written(legacy_tiny_model_dir, tmp_path, monkeypatch):
    config = read_config(_place("release-0.3-noise2", legacy_tiny_model_dir, tmp_path, monkeypatch))
    assert (config.batching, config.noise_version, config.strategy, config.population) == ("chunks", 2, "gaussian", 3)


def test_an_old_run_ensembles_from_its_stored_answers(fixture_run):
    old_run = fixture_run[0]
    before = json.loads((old_run / "report.json").read_text())
    report = ensemble(old_run, [1, 2], 3, progress=False)
    for key in ("rows", "experts", "base", "ensembles"):  # every figure the release wrote, unchanged
        assert _as_before(report[key], before[key]) == before[key], key
    assert [e["experts_asked"] for e in report["ensembles"]] == [1, 2]  # added since: the full vote asks all K


def _as_before(new, old):
    """`new` with only the fields `old` had (a later release adds fields to a report, never changes one)."""
    if isinstance(old, dict):
        return {k: _as_before(new[k], v) for k, v in old.items()}
    if isinstance(old, list):
        return [_as_before(n, o) for n, o in zip(new, old, strict=True)]
    return new


def test_an_old_run_resumes_with_the_scores_that_release_gave(fixture_run):
    old_run, fixture, version = fixture_run
    expected = json.loads((fixture / "expected.json").read_text())["resumed_candidate"]
    old = read_config(old_run)
    # a config as a new command line makes it: the newest batching and noise; the folder keeps its own
    fresh = SearchConfig(**{**old.__dict__, "batching": "chunks", "noise_version": 2, "population": 4})
    result = search(fresh, old_run, progress=False)
    assert len(result.ranked) == 4
    with sqlite3.connect(old_run / DB_NAME) as con:
        cand = con.execute(
            "SELECT idx, seed, sigma, score, accuracy, format_rate FROM candidates WHERE idx=3"
        ).fetchone()
        rows = con.execute(
            "SELECT example, example_id, completion, answer, vote_key, reward, correct FROM results "
            "WHERE model='cand:3' AND split='val' ORDER BY example"
        ).fetchall()
        stored = json.loads(con.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
    assert list(cand) == expected["row"]
    assert [list(r) for r in rows] == expected["val"]
    made_with = ("split", 1) if version == 1 else ("chunks", 2)
    assert (stored["batching"], stored["noise_version"]) == made_with  # what its candidates were made with


def test_an_old_run_exports_the_weights_that_release_exported(fixture_run, tmp_path):
    from safetensors.numpy import load_file

    old_run, fixture, version = fixture_run
    expected = json.loads((fixture / "expected.json").read_text())["export_rank_1"]
    old = read_config(old_run)
    search(SearchConfig(**{**old.__dict__, "noise_version": 2, "population": 4}), old_run, progress=False)
    out = export_candidate(old_run, 1, tmp_path / "exported")
    recipe = json.loads((out / "thickets_recipe.json").read_text())
    assert (recipe["run"]["index"], recipe["seed"], recipe["sigma"]) == (
        expected["index"],
        expected["seed"],
        expected["sigma"],
    )
    tensors = load_file(out / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].tobytes())
    assert h.hexdigest() == expected["tensors_sha256"]
    assert recipe["noise_version"] == NOISE_VERSIONS[version] and spec_from_recipe(recipe).version == version
    assert recipe["strategy"] == "gaussian"


def _resave_as_a_later_release(model: Path) -> None:
    """The model's configuration as another transformers release writes it when it saves the same model
    again: the same text but for the transformers_version it records."""
    for name in ("config.json", "generation_config.json"):
        path = model / name
        path.write_text(path.read_text().replace('"transformers_version": "5.24.0"', '"transformers_version": "9.9.0"'))


def test_an_old_run_resumes_ensembles_and_exports_once_another_release_saved_its_model(fixture_run, tmp_path):
    old_run, fixture, _ = fixture_run
    model = old_run.parent / "model"
    before = (model / "config.json").read_text()
    _resave_as_a_later_release(model)
    assert (model / "config.json").read_text() != before
    expected = json.loads((fixture / "expected.json").read_text())
    old = read_config(old_run)
    search(SearchConfig(**{**old.__dict__, "noise_version": 2, "population": 4}), old_run, progress=False)
    with sqlite3.connect(old_run / DB_NAME) as con:
        row = con.execute(
            "SELECT idx, seed, sigma, score, accuracy, format_rate FROM candidates WHERE idx=3"
        ).fetchone()
        recorded = json.loads(con.execute("SELECT value FROM meta WHERE key='model_identity'").fetchone()[0])
    assert list(row) == expected["resumed_candidate"]["row"]
    assert "scheme" not in recorded  # the run's record is kept as that release wrote it
    assert ensemble(old_run, [1, 2], 3, progress=False)["ensembles"]
    out = export_candidate(old_run, 1, tmp_path / "exported")
    assert json.loads((out / "thickets_recipe.json").read_text())["run"]["index"] == expected["export_rank_1"]["index"]


def _change_a_weight(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 2
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


def _change_the_architecture(model: Path) -> None:
    path = model / "config.json"
    path.write_text(path.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))


@pytest.mark.parametrize("change", [_change_a_weight, _change_the_architecture])
def test_an_old_run_refuses_its_model_once_a_weight_or_the_architecture_changed(fixture_run, change, tmp_path):
    old_run = fixture_run[0]
    model = old_run.parent / "model"
    _resave_as_a_later_release(model)
    change(model)
    before = (old_run / DB_NAME).read_bytes()
    old = read_config(old_run)
    with pytest.raises(ThicketsError, match="has changed since run"):
        search(SearchConfig(**{**old.__dict__, "noise_version": 2, "population": 4}), old_run, progress=False)
    with pytest.raises(ThicketsError, match="has changed since run"):
        ensemble(old_run, [1, 2], 3, progress=False)
    with pytest.raises(ThicketsError, match="has changed since run"):
        export_candidate(old_run, 1, tmp_path / "exported")
    assert (old_run / DB_NAME).read_bytes() == before
    assert not (tmp_path / "exported").exists()


def test_an_old_run_has_every_verdict_and_gains_the_unscored_column_with_new_rows(old_run):
    """Results made before unscored rows existed read as scored, before and after new rows add the column."""
    from thickets.randopt.store import BASE, RunStore
    from thickets.tasks.base import Example, Score, ScoredExample

    with RunStore.open(old_run, write=False) as store:
        before = store.scores(BASE, "val")
        assert before and not any(s.unscored for s in before.values()) and store.unscored() == {}
    failed = ScoredExample(99, Example("q", "q?"), "c", Score(None, None, 0.0, False, unscored=True))
    with RunStore.open(old_run) as store:
        store.add_results("cand:0", "test", [failed])
    with RunStore.open(old_run, write=False) as store:
        assert store.scores(BASE, "val") == before and store.unscored() == {"test": 1}
