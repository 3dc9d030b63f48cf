"""Iterative RandOpt end to end on the tiny model: rounds, their records, resuming, refusals."""

import json

import pytest

from thickets.distill.config import DistillConfig
from thickets.distill.rounds import distill
from thickets.errors import ThicketsError
from thickets.models import resolve
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits


@pytest.fixture()
def run(tiny_model_dir, tmp_path):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=4, sigmas=(0.1,), val_size=4, max_new_tokens=4
    )
    search(config, tmp_path / "run", progress=False)
    return tmp_path / "run"


SMALL = dict(top_k=2, train_size=6, test_size=5, learning_rate=1e-3, lora_r=4, epochs=1.0, train_batch_size=4)


def test_two_rounds_record_traces_models_and_a_report_and_never_train_on_held_out_questions(run):
    records = distill(run, DistillConfig(rounds=2, **SMALL), progress=False)
    assert [r["round"] for r in records] == [1, 2]
    task = get_task("toy")
    val, test = make_splits(task, 0, 4, 5)
    held_out = {ex.id for ex in val + test}
    for r in records:
        kept = [json.loads(line) for line in (run / "distill" / f"round-{r['round']}" / "kept.jsonl").open()]
        assert kept and not {k["example_id"] for k in kept} & held_out
        assert all(k["score"]["correct"] for k in kept)  # gold mode: the toy task checks answers
        assert r["kept_total"] == len(kept) and r["mode"] == "gold"
        assert resolve(r["model"]["path"]).sha256 == r["model"]["sha256"]
        assert r["test"]["test_size"] == 5 and r["test"]["ensemble"]["answers_per_question"] == 2
    # round 2 searched around round 1's model, and accumulated round 1's traces
    assert records[1]["base_model"] == records[0]["model"]["path"]
    assert records[1]["kept_total"] >= records[0]["kept_total"]
    assert (run / "distill" / "round-2" / "search" / "thickets.sqlite").exists()
    assert (run / "distill" / "accuracy_by_round.png").stat().st_size > 0
    # a finished round is read back, not redone
    again = distill(run, DistillConfig(rounds=2, **SMALL), progress=False)
    assert again == records
    # any round's model ships as a plain folder, checked against the hash its round recorded
    from transformers import AutoModelForCausalLM

    from thickets.ship.export import export_round

    out = export_round(run, 2, run.parent / "round-2-model")
    AutoModelForCausalLM.from_pretrained(out)
    assert json.loads((out / "thickets_distill.json").read_text())["model"]["sha256"] == records[1]["model"]["sha256"]
    with pytest.raises(ThicketsError, match="no finished distillation round 3"):
        export_round(run, 3, run.parent / "nope")


def test_bad_distill_input_is_refused_before_anything_is_written(run):
    for cfg, message in (
        (dict(SMALL, top_k=5), "top-k 5 is more than the run's population of 4"),
        (dict(SMALL, train_size=10**9), "train-size must be between"),
    ):
        with pytest.raises(ThicketsError, match=message):
            distill(run, DistillConfig(**cfg), progress=False)
    with pytest.raises(ThicketsError, match="rounds must be between 1 and 100"):
        DistillConfig(rounds=0)
    assert not (run / "distill").exists()


def test_a_round_killed_mid_way_resumes_to_the_same_traces_and_the_same_model(run):
    """What kill -9 leaves: the finished experts' trace files, a half-written temporary, no model yet."""
    cfg = DistillConfig(rounds=1, samples=2, temperature=1.0, **SMALL)
    first = distill(run, cfg, progress=False)[0]
    round_dir = run / "distill" / "round-1"
    traces = {p.name: p.read_text() for p in round_dir.glob("traces-*.jsonl")}
    assert len(traces) == 2
    # back to the state of a kill during expert 2's sampling
    for name in ("round.json", "kept.jsonl", "traces-2.jsonl"):
        (round_dir / name).unlink()
    import shutil

    shutil.rmtree(round_dir / "model")
    (round_dir / ".traces-2.jsonl.k3x9q").write_text('{"example_id": "half')  # write_whole's temporary
    resumed = distill(run, cfg, progress=False)[0]
    assert {p.name: p.read_text() for p in round_dir.glob("traces-*.jsonl")} == traces
    assert resumed["model"]["sha256"] == first["model"]["sha256"]  # the same traces train the same weights
    assert resumed["kept_total"] == first["kept_total"] and resumed["test"] == first["test"]


def test_a_round_that_keeps_no_trace_says_so_and_trains_nothing(tiny_model_dir, tmp_path):
    from tests.support import ToyTask
    from thickets.tasks import Score, register_task

    class Never(ToyTask):
        name = "never-right"

        def score(self, example, completion):
            return Score(completion[:1] or None, completion[:1] or None, 0.0, False)

    register_task("never-right", Never, "test task: no answer is ever correct")
    config = SearchConfig(
        model=str(tiny_model_dir), task="never-right", population=2, sigmas=(0.1,), val_size=3, max_new_tokens=3
    )
    search(config, tmp_path / "run", progress=False)
    with pytest.raises(ThicketsError, match=r"round 1 kept no new traces .* none correct\); nothing was trained"):
        distill(tmp_path / "run", DistillConfig(rounds=1, **dict(SMALL, top_k=2)), progress=False)
    assert not (tmp_path / "run" / "distill" / "round-1" / "model").exists()
    assert not (tmp_path / "run" / "distill" / "round-1" / "round.json").exists()
