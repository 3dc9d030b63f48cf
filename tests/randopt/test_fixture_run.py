"""A run folder made by the previous release (tests/fixtures/runs/release-0.1.0) still resumes, ensembles
and exports, with the scores and weights that release gave."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from thickets.noise import NOISE_VERSIONS
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.search import search
from thickets.randopt.store import DB_NAME, read_config
from thickets.ship.export import export_candidate, spec_from_recipe

FIXTURE = Path(__file__).parents[1] / "fixtures" / "runs" / "release-0.1.0"


@pytest.fixture()
def old_run(legacy_tiny_model_dir, tmp_path, monkeypatch):
    """The fixture run beside a copy of the tiny model under the name it was made with ("model")."""
    shutil.copytree(legacy_tiny_model_dir, tmp_path / "model")
    (tmp_path / "run").mkdir()
    for name in (DB_NAME, "report.json"):
        shutil.copy(FIXTURE / name, tmp_path / "run" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run"


def test_an_old_run_reads_as_the_release_wrote_it(old_run):
    config = read_config(old_run)
    assert config.batching == "split" and config.population == 3 and config.model == "model"
    assert config.noise_version == 1  # the stream release 0.1 made its candidates with


def test_an_old_run_ensembles_from_its_stored_answers(old_run):
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


def test_an_old_run_resumes_with_the_scores_that_release_gave(old_run):
    expected = json.loads((FIXTURE / "expected.json").read_text())["resumed_candidate"]
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
    assert (stored["batching"], stored["noise_version"]) == ("split", 1)  # what its candidates were made with


def test_an_old_run_exports_the_weights_that_release_exported(old_run, tmp_path):
    from safetensors.numpy import load_file

    expected = json.loads((FIXTURE / "expected.json").read_text())["export_rank_1"]
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
    assert recipe["noise_version"] == NOISE_VERSIONS[1] and spec_from_recipe(recipe).version == 1
