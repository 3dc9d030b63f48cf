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


def _rewrite_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(dict(reversed(list(data.items()))), indent=4))  # other key order, other layout


def _resave_as_another_release(model_dir):
    """What a re-save of the same model by another library release may change: the configuration's
    save-time keys and its layout, the safetensors metadata, the tensors' order in the file, sharding."""
    from safetensors.numpy import load_file, save_file

    def release(data):
        data["transformers_version"] = "9.9.0"
        data["torch_dtype"] = data.pop("dtype", "float32")  # transformers 4's name for it

    _rewrite_json(model_dir / "config.json", release)
    _rewrite_json(model_dir / "generation_config.json", lambda d: d.update(transformers_version="9.9.0"))
    tensors = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    names = sorted(tensors, reverse=True)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, model_dir / shard, {"format": "np"})
        weight_map.update(dict.fromkeys(part, shard))
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_model_keeps_its_identity_when_another_release_saves_it_again(own_model):
    from thickets.models import IDENTITY_SCHEME, resolve

    before = resolve(str(own_model))
    _resave_as_another_release(own_model)
    after = resolve(str(own_model))
    assert after.sha256 == before.sha256 and after.scheme == before.scheme == IDENTITY_SCHEME
    assert len(list(own_model.glob("*.safetensors"))) == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda m: _rewrite_json(m / "config.json", lambda d: d.update(rms_norm_eps=1e-3)),
        lambda m: _rewrite_json(m / "config.json", lambda d: d.update(architectures=["LlamaForTokenClassification"])),
        lambda m: _rewrite_json(m / "generation_config.json", lambda d: d.update(eos_token_id=0)),  # stops elsewhere
        lambda m: change_weights(m),
    ],
    ids=["architecture", "class", "stop-token", "weight"],
)
def test_a_changed_weight_or_configuration_field_is_another_model(own_model, change):
    from thickets.models import resolve

    before = resolve(str(own_model)).sha256
    change(own_model)
    assert resolve(str(own_model)).sha256 != before


def test_a_run_resumes_once_another_release_saved_its_model_and_refuses_a_changed_one(tmp_path, own_model):
    config, run = small_run(tmp_path, own_model)
    with sqlite3.connect(run / DB_NAME) as con:
        recorded = json.loads(con.execute("SELECT value FROM meta WHERE key='model_identity'").fetchone()[0])
    assert recorded["scheme"] == "tensors+config-1"
    _resave_as_another_release(own_model)
    assert len(search(SearchConfig(**{**config.__dict__, "population": 3}), run, progress=False).ranked) == 3
    _rewrite_json(own_model / "config.json", lambda d: d.update(rms_norm_eps=1e-3))
    with pytest.raises(ThicketsError, match="has changed since run"):
        search(SearchConfig(**{**config.__dict__, "population": 4}), run, progress=False)


def test_a_record_from_a_newer_identity_scheme_is_refused_in_one_line(tmp_path, own_model):
    _, run = small_run(tmp_path, own_model)
    with sqlite3.connect(run / DB_NAME) as con:
        recorded = json.loads(con.execute("SELECT value FROM meta WHERE key='model_identity'").fetchone()[0])
        con.execute("UPDATE meta SET value=? WHERE key='model_identity'", (json.dumps({**recorded, "scheme": "x-9"}),))
    with pytest.raises(ThicketsError, match=r"identity scheme 'x-9', which this thickets does not know"):
        ensemble(run, [1], 3, progress=False)
