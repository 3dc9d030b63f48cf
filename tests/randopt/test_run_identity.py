"""A run folder is bound to its model, its examples and the package versions that made them."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from thickets.errors import ThicketsError
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.search import search
from thickets.randopt.store import DB_NAME
from thickets.ship.export import export_candidate
from thickets.tasks import register_task
from thickets.tasks.base import Example, Score


def small_run(tmp_path, model_dir, task="toy", **over):
    config = SearchConfig(
        **{**dict(model=str(model_dir), task=task, population=2, val_size=3, max_new_tokens=3, sigmas=(0.05,)), **over}
    )
    search(config, tmp_path / "run", progress=False)
    return config, tmp_path / "run"


@pytest.fixture()
def own_model(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    return model


def change_weights(model_dir):
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, path, metadata={"format": "pt"})


def test_ensemble_and_export_refuse_a_model_that_changed_since_the_run(tmp_path, own_model):
    _, run = small_run(tmp_path, own_model)
    change_weights(own_model)
    with pytest.raises(ThicketsError, match="has changed since run"):
        ensemble(run, [1], 3, progress=False)
    with pytest.raises(ThicketsError, match="has changed since run"):
        export_candidate(run, 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class DriftingTask:
    """Examples made by a generator whose output depends on a version, as a package upgrade would change it."""

    name = "drifting"
    description = "test task whose generator changes"
    stop = ("\n",)
    system_prompt = None
    version = 1

    def examples(self, seed):
        i = 0
        while True:
            yield Example(f"drift:{DriftingTask.version}:{i}", f"Say something about {DriftingTask.version}-{i}.")
            i += 1

    def score(self, example, completion):
        return Score(completion[:1] or None, completion[:1] or None, float(bool(completion)), bool(completion))


def test_resuming_refuses_validation_examples_that_changed(tmp_path, tiny_model_dir):
    register_task("drifting", DriftingTask, DriftingTask.description)
    DriftingTask.version = 1
    config, run = small_run(tmp_path, tiny_model_dir, task="drifting")
    before = (run / DB_NAME).read_bytes()
    DriftingTask.version = 2
    with pytest.raises(ThicketsError, match=r"validation example 0 of run .* the task's examples changed"):
        search(SearchConfig(**{**config.__dict__, "population": 3}), run, progress=False)
    assert (run / DB_NAME).read_bytes() == before
    DriftingTask.version = 1
    assert len(search(SearchConfig(**{**config.__dict__, "population": 3}), run, progress=False).ranked) == 3


def test_the_versions_of_packages_that_make_the_examples_are_recorded_and_checked(tmp_path, tiny_model_dir):
    from importlib.metadata import version

    config, run = small_run(tmp_path, tiny_model_dir, task="products")
    with sqlite3.connect(run / DB_NAME) as con:
        recorded = json.loads(con.execute("SELECT value FROM meta WHERE key='task_packages'").fetchone()[0])
        assert recorded == {"reasoning-gym": version("reasoning-gym")}
        con.execute("UPDATE meta SET value=? WHERE key='task_packages'", (json.dumps({"reasoning-gym": "0.0.1"}),))
    with pytest.raises(ThicketsError, match=r"reasoning-gym is .* now but was 0.0.1"):
        search(SearchConfig(**{**config.__dict__, "population": 3}), run, progress=False)
    with pytest.raises(ThicketsError, match=r"reasoning-gym is .* now but was 0.0.1"):
        ensemble(run, [1], 3, progress=False)
