"""Experiment trackers (`--report-to`, issue 27 finding 6): a search's scores reach TensorBoard's event files
and trackio's local store; a tracker that fails is dropped with one warning and never fails the run."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from tests.support import CLI, cli_env, search_argv
from thickets.cli.commands import main
from thickets.randopt.store import RunStore
from thickets.tracking import Tracker, check_report_to


def test_a_searchs_scores_reach_tensorboard_and_trackio(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("trackio")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = search_argv(tiny_model_dir, run, "--report-to", "tensorboard,trackio", population=4)
    done = subprocess.run(
        [*CLI, *argv], env=cli_env(TRACKIO_DIR=str(tmp_path / "trackio")), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with RunStore.open(run, write=False) as store:
        scores = {c.idx: c.score for c in store.candidates()}
    assert len(scores) == 4
    (events,) = (run / "tensorboard" / "search").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("search/score")}
    assert logged == pytest.approx(scores)
    assert [e.step for e in acc.Scalars("search/best")] == sorted(scores)
    con = sqlite3.connect(tmp_path / "trackio" / "thickets.db")
    rows = con.execute("SELECT step, metrics FROM metrics WHERE run_name=?", ("run-search",)).fetchall()
    con.close()
    from_trackio = {step: json.loads(m)["search/score"] for step, m in rows if "search/score" in json.loads(m)}
    assert from_trackio == pytest.approx(scores)


class _Broken:
    def __init__(self, *args):
        pass

    def log(self, metrics, step):
        raise OSError("disk full")

    def close(self):
        raise AssertionError("a dropped tracker is not closed")


def test_a_tracker_that_fails_is_dropped_once_and_the_run_goes_on(tiny_model_dir, tmp_path, monkeypatch, caplog):
    from thickets import tracking

    monkeypatch.setitem(tracking._BACKENDS, "wandb", _Broken)
    with caplog.at_level("WARNING"):
        assert main(search_argv(tiny_model_dir, tmp_path / "run", "--report-to", "wandb", population=3)) == 0
    warned = [r.getMessage() for r in caplog.records if "wandb" in r.getMessage()]
    assert len(warned) == 1 and "disk full" in warned[0] and "goes on without it" in warned[0]
    with RunStore.open(tmp_path / "run", write=False) as store:
        assert len(store.candidates()) == 3


def test_a_tracker_that_cannot_start_is_dropped_and_nothing_starts_before_the_checks(tmp_path, monkeypatch, caplog):
    from thickets import tracking

    def cannot(*args):
        raise ImportError("No module named 'mlflow'")

    monkeypatch.setitem(tracking._BACKENDS, "mlflow", cannot)
    tracker = Tracker(("mlflow", "none"), tmp_path, "search", {})
    assert tracker.asked == ()  # none among them: no tracker
    tracker = Tracker(("mlflow",), tmp_path, "search", {})
    assert not tracker.backends  # nothing started before the first figure
    with caplog.at_level("WARNING"):
        tracker.log({"x": 1.0, "label": "not a number", "nan": float("nan")}, 0)
        tracker.log({"x": 2.0}, 1)
    assert sum("mlflow cannot start" in r.getMessage() for r in caplog.records) == 1
    tracker.close()


def test_an_unknown_tracker_is_refused_in_one_line_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(Exception, match="--report-to 'neptune' is not a tracker"):
        check_report_to(["tensorboard", "neptune"])
    assert main(search_argv(tiny_model_dir, tmp_path / "run", "--report-to", "neptune")) == 2
    assert "not a tracker" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # a search refused by its own checks starts no tracker either
    assert main(search_argv(tiny_model_dir, tmp_path / "bad", "--report-to", "tensorboard", task="nonesuch")) == 2
    assert not (tmp_path / "bad" / "tensorboard").exists()
