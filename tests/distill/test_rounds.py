"""Iterative RandOpt end to end on the tiny model: rounds, their records, resuming, refusals."""

import json
from pathlib import Path

import pytest

from thickets.distill.config import DistillConfig
from thickets.distill.rounds import distill
from thickets.errors import ThicketsError
from thickets.models import resolve
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits

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
    with pytest.raises(ThicketsError, match=r"no finished round 3 of distillation .distill."):
        export_round(run, 3, run.parent / "nope")


def test_bad_distill_input_is_refused_before_anything_is_written(run):
    for cfg, message in (
        (dict(SMALL, top_k=5), "top-k 5 is more than the run's population of 4"),
        (dict(SMALL, train_size=10**9), "--train-size must be a number from 1 to"),
    ):
        with pytest.raises(ThicketsError, match=message):
            distill(run, DistillConfig(**cfg), progress=False)
    with pytest.raises(ThicketsError, match="--rounds must be a number from 1 to 100"):
        DistillConfig(rounds=0)
    assert not (run / "distill").exists()


def test_a_task_with_neither_gold_answers_nor_vote_keys_is_refused(tiny_model_dir, tmp_path):
    reward = str(Path(__file__).parents[1] / "fixtures" / "grpo_reward.py") + ":length_reward"
    config = SearchConfig(
        model=str(tiny_model_dir),
        task="keyless",
        reward=reward,
        population=2,
        sigmas=(0.1,),
        val_size=4,
        max_new_tokens=4,
    )
    search(config, tmp_path / "run", progress=False)
    with pytest.raises(ThicketsError, match="task keyless gives neither gold answers nor vote keys"):
        distill(tmp_path / "run", DistillConfig(**SMALL), progress=False)
    with pytest.raises(ThicketsError, match="task keyless has no answers to check traces against"):
        distill(tmp_path / "run", DistillConfig(filter="gold", **SMALL), progress=False)
    assert not (tmp_path / "run" / "distill").exists()


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


def test_a_prompts_only_task_with_a_reward_distils_on_the_traces_that_agree_with_the_vote(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say something about {i}."}) + "\n" for i in range(40)))
    reward = str(Path(__file__).parents[1] / "fixtures" / "grpo_reward.py") + ":length_reward"
    config = SearchConfig(
        model=str(tiny_model_dir),
        task=f"prompts:{data}",
        reward=reward,
        population=4,
        sigmas=(0.1,),
        val_size=4,
        max_new_tokens=4,
    )
    search(config, tmp_path / "run", progress=False)
    (record,) = distill(tmp_path / "run", DistillConfig(rounds=1, samples=3, **SMALL), progress=False)
    assert record["mode"] == "vote"
    traces = [
        json.loads(line)
        for p in sorted((tmp_path / "run").glob("distill/round-1/traces-*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    kept = [json.loads(line) for line in (tmp_path / "run" / "distill" / "round-1" / "kept.jsonl").open()]
    assert 0 < len(kept) < len(traces)
    for k in kept:  # every kept trace carries its question's most common answer among the experts' samples
        keys = [t["score"]["vote_key"] for t in traces if t["example_id"] == k["example_id"] and t["score"]["vote_key"]]
        assert keys.count(k["score"]["vote_key"]) == max(keys.count(v) for v in keys)


def test_kill_9_during_a_round_then_the_same_command_finishes_it_with_the_same_traces_and_model(run, tmp_path):
    """A real SIGKILL of `thickets distill` once the first expert's traces are on disk (the second expert's
    sampling, or the fine-tune, is under way); the same command then finishes the round, keeping that
    file as it was, and ends where an uninterrupted run of the same command ends."""
    import shutil
    import signal
    import subprocess
    import time

    from tests.support import CLI, cli_env

    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    flags = ["--rounds", "1", "--samples", "2", "--top-k", "2", "--train-size", "40", "--test-size", "5"]
    flags += ["--learning-rate", "1e-3", "--lora-r", "4", "--epochs", "1", "--train-batch-size", "4"]
    round_dir = run / "distill" / "round-1"
    first = round_dir / "traces-1.jsonl"
    proc = subprocess.Popen([*CLI, "--quiet", "distill", "--run-dir", str(run), *flags], env=cli_env())
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the command ended before the kill"
    assert first.exists() and not (round_dir / "round.json").exists()
    written = first.read_text(), first.stat().st_mtime_ns

    for folder in (run, twin):
        r = subprocess.run(
            [*CLI, "--quiet", "distill", "--run-dir", str(folder), *flags], env=cli_env(), capture_output=True
        )
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert (first.read_text(), first.stat().st_mtime_ns) == written  # finished work is not redone
    resumed = json.loads((round_dir / "round.json").read_text())
    whole = json.loads((twin / "distill" / "round-1" / "round.json").read_text())
    for name in ("traces-1.jsonl", "traces-2.jsonl", "kept.jsonl"):
        assert (round_dir / name).read_text() == (twin / "distill" / "round-1" / name).read_text()
    assert resumed["model"]["sha256"] == whole["model"]["sha256"]
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize(
    "round_2",
    [("banana", "blueberry", "blackberry"), ("banana", "banana", "blueberry"), ("", "", "")],
    # as-many-new-as-old: dropping round 1's traces for round 2's left the count unchanged, once taken for none
    ids=["new-outvote-old", "as-many-new-as-old", "nothing-new"],
)
def test_vote_mode_keeps_earlier_rounds_traces_whatever_later_experts_vote(run, monkeypatch, round_2):
    """Round 2's experts answer b to every question (or nothing), against the a that round 1's experts agreed
    on: round 1's traces stay in round 2's training set, and round 2 keeps (and counts) its own b traces
    beside them; with none, it trains on round 1's alone."""
    from thickets.distill import rounds
    from thickets.seeds import derive_seed

    script = {1: ("apple", "avocado", "cherry"), 2: round_2}  # each expert's answer (the vote key: its first letter)
    expert = {derive_seed(b"distill", 0, r, k): (r, k) for r in script for k in (1, 2, 3)}

    def answers(engine, task, train, config, cfg, seed):  # instead of the perturbed tiny model's answers
        r, k = expert[seed]
        text = script[r][k - 1]
        return [(ex.id, 0, text, s) for ex, s in zip(train, task.score_batch(train, [text] * len(train)))]

    trained: list[list[str]] = []
    fine_tune = rounds.fine_tune

    def spy(model, pairs, *args, **kwargs):
        trained.append(sorted(completion for _, completion, _ in pairs))
        return fine_tune(model, pairs, *args, **kwargs)

    monkeypatch.setattr(rounds, "_answers", answers)
    monkeypatch.setattr(rounds, "fine_tune", spy)
    cfg = DistillConfig(rounds=2, filter="vote", **dict(SMALL, top_k=3))
    first, second = distill(run, cfg, progress=False)
    n = cfg.train_size
    assert first["mode"] == "vote" and trained[0] == sorted(["apple", "avocado"] * n)
    new = sorted({text for text in round_2 if text})
    assert trained[1] == sorted(["apple", "avocado", *new] * n)
    kept = [json.loads(line) for line in (run / "distill" / "round-2" / "kept.jsonl").open()]
    assert sorted(k["completion"] for k in kept) == trained[1]
    assert second["kept_this_round"] == len(new) * n and second["kept_total"] == len(trained[1])
    assert second["share_kept"] == len(new) / 3
