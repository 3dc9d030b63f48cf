"""Distillation from the experts' probabilities (issue 29): the losses, the teacher of a trace, a round with
--loss kd-*, its stored probabilities across a kill, --on-policy and --keep-best."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from thickets.distill.config import DistillConfig
from thickets.distill.rounds import distill
from thickets.distill.teacher import agreeing, combine, kd_loss, read_expert
from thickets.distill.traces import Trace, keep
from thickets.errors import ThicketsError
from thickets.tasks import Score


def test_forward_kl_is_the_divergence_from_the_teacher_and_every_loss_is_zero_at_the_teacher():
    torch.manual_seed(0)
    logits = torch.randn(3, 7)
    teacher = torch.softmax(torch.randn(3, 7), dim=-1)
    ids = torch.arange(7).repeat(3, 1)
    want = (teacher * (teacher.log() - torch.log_softmax(logits, -1))).sum(1).mean()
    torch.testing.assert_close(kd_loss(logits, ids, teacher, "kd-fkl"), want)
    # a student equal to the teacher, over the teacher's tokens: no divergence by any of the three
    top_p, top_i = teacher.topk(3, dim=-1)
    top_p = top_p / top_p.sum(1, keepdim=True)
    at_teacher = torch.full((3, 7), -30.0).scatter(1, top_i, top_p.log())
    for loss in ("kd-rkl", "kd-jsd"):
        assert float(kd_loss(at_teacher, top_i, top_p, loss)) == pytest.approx(0.0, abs=1e-6)
        assert float(kd_loss(logits, top_i, top_p, loss)) > 1e-3
    assert float(kd_loss(at_teacher, top_i, top_p, "kd-fkl")) == pytest.approx(0.0, abs=1e-5)
    # a gradient step moves the student towards the teacher
    for loss in ("kd-fkl", "kd-rkl", "kd-jsd"):
        x = logits.clone().requires_grad_(True)
        before = kd_loss(x, top_i, top_p, loss)
        before.backward()
        after = kd_loss((x - 0.5 * x.grad).detach(), top_i, top_p, loss)
        assert float(after) < float(before.detach())
    with pytest.raises(ValueError, match="unknown loss"):
        kd_loss(logits, ids, teacher, "kd-xyz")


@pytest.mark.parametrize("loss", ["kd-fkl", "kd-rkl", "kd-jsd"])
def test_a_one_token_teacher_is_learnt_as_its_token_by_every_loss(loss):
    """A trace no expert agrees with is taught its own tokens: over one token, a reverse KL or JSD would be 0
    whatever the student says, so that position takes the cross-entropy."""
    ids, probs = combine([4, 2], [], top=3)
    logits = torch.zeros(2, 7, requires_grad=True)
    value = kd_loss(logits, ids, probs, loss)
    assert float(value.detach()) == pytest.approx(torch.log(torch.tensor(7.0)).item(), rel=1e-5)  # -log(1/7)
    value.backward()
    assert float(logits.grad[0, 4]) < 0 and float(logits.grad[1, 2]) < 0  # raising the trace's token lowers it


def test_a_traces_teacher_is_the_mean_of_its_agreeing_experts_or_its_own_tokens():
    a = (torch.tensor([[5, 6], [1, 2]], dtype=torch.int32), torch.tensor([[0.6, 0.4], [0.9, 0.1]]))
    b = (torch.tensor([[6, 7], [1, 3]], dtype=torch.int32), torch.tensor([[0.8, 0.2], [0.5, 0.5]]))
    ids, probs = combine([6, 1], [a, b], top=2)
    # position 0: 5 -> 0.3, 6 -> 0.2 + 0.4 = 0.6, 7 -> 0.1; the top two renormalised
    assert ids[0].tolist() == [6, 5] and probs[0].tolist() == pytest.approx([0.6 / 0.9, 0.3 / 0.9])
    assert ids[1].tolist() == [1, 3] and probs[1].tolist() == pytest.approx([0.7 / 0.95, 0.25 / 0.95])
    ids, probs = combine([4, 9], [], top=3)
    assert ids[:, 0].tolist() == [4, 9] and probs.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def _t(q: str, rank: int, key: str | None, correct: bool = False, text: str = "") -> Trace:
    return Trace(q, rank, 0, text or f"{key}", Score(key, key, float(correct), correct))


def test_experts_agree_with_a_trace_by_its_vote_key_or_by_being_right_and_the_student_never_votes():
    traces = [_t("q1", 1, "a", True), _t("q1", 2, "b"), _t("q1", 3, "a", True), _t("q2", 1, "c"), _t("q2", 2, "c")]
    kept = [_t("q1", 1, "a", True), _t("q2", 2, "c")]
    assert agreeing(kept, traces, "vote") == [[1, 3], [1, 2]]
    assert agreeing(kept, traces, "gold") == [[1, 3], []]
    # two student answers of "b" on q1 would outvote the experts' "a" if they voted: they do not
    student = [_t("q1", 4, "b", text="b1"), _t("q1", 4, "b", text="b2"), _t("q2", 4, "c", text="c!")]
    kept = keep(traces, "vote", 8, judged=student)
    assert {(t.example_id, t.score.vote_key) for t in kept} == {("q1", "a"), ("q2", "c")}
    assert [t.completion for t in kept if t.expert_rank == 4] == ["c!"]  # judged like the experts' answers


KD = dict(top_k=2, train_size=16, test_size=5, learning_rate=5e-3, lora_r=4, epochs=3.0, train_batch_size=4)


def test_a_kd_round_trains_towards_the_stored_probabilities_and_its_loss_falls(run):
    record = distill(run, DistillConfig(rounds=1, loss="kd-fkl", top_probs=5, **KD), progress=False)[0]
    folder = run / "distill" / "round-1"
    kept = [json.loads(line) for line in (folder / "kept.jsonl").open()]
    stored = {k: read_expert(folder / f"teacher-{k}.safetensors") for k in (1, 2)}
    assert kept and set().union(*stored.values()) <= {(t["example_id"], t["completion"]) for t in kept}
    for per_trace in stored.values():
        for ids, probs in per_trace.values():
            assert ids.shape == probs.shape and ids.shape[1] == 5
            assert bool((probs[:, :-1] >= probs[:, 1:]).all()) and bool((probs.sum(1) <= 1.0 + 1e-5).all())
    losses = record["train_losses"]
    assert len(losses) >= 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert record["config"]["loss"] == "kd-fkl" and record["test"]["distilled"]["accuracy"] is not None


def test_a_kd_round_killed_after_one_experts_probabilities_keeps_them_and_ends_as_an_uninterrupted_one(
    run, tmp_path, monkeypatch
):
    from thickets.distill import rounds

    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    cfg = DistillConfig(rounds=1, loss="kd-jsd", top_probs=4, **KD)
    calls = []
    real = rounds.expert_top

    def dies_on_the_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill leaves: expert 1's file, nothing of expert 2's, no model
        return real(*args, **kw)

    monkeypatch.setattr(rounds, "expert_top", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        distill(run, cfg, progress=False)
    folder = run / "distill" / "round-1"
    first = folder / "teacher-1.safetensors"
    assert first.exists() and not (folder / "teacher-2.safetensors").exists() and not (folder / "model").exists()
    written = first.read_bytes(), first.stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(rounds, "expert_top", real)
    counted = []
    monkeypatch.setattr(rounds, "expert_top", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = distill(run, cfg, progress=False)[0]
    assert len(counted) == 1  # expert 2 only
    assert (first.read_bytes(), first.stat().st_mtime_ns) == written
    whole = distill(twin, cfg, progress=False)[0]
    for k in (1, 2):
        assert (folder / f"teacher-{k}.safetensors").read_bytes() == (
            twin / "distill" / "round-1" / f"teacher-{k}.safetensors"
        ).read_bytes()
    assert resumed["model"]["sha256"] == whole["model"]["sha256"] and resumed["train_losses"] == whole["train_losses"]


def test_on_policy_adds_the_students_judged_answers_and_keep_best_starts_each_round_from_the_best(run):
    cfg = DistillConfig(rounds=2, loss="kd-rkl", on_policy=True, keep_best=True, top_probs=4, **KD)
    records = distill(run, cfg, progress=False)
    folder = run / "distill" / "round-1"
    student = [json.loads(line) for line in (folder / "traces-student.jsonl").open()]
    assert len(student) == 16 and {s["expert_rank"] for s in student} == {3}
    kept_ranks = {json.loads(line)["expert_rank"] for line in (folder / "kept.jsonl").open()}
    assert kept_ranks <= {1, 2, 3}
    assert all("val_score" in r for r in records)
    best = max(records, key=lambda r: (r["val_score"], -r["round"]))
    assert json.loads((run / "distill" / "best.json").read_text())["round"] == best["round"]
    # round 2 started from round 1's model: the best (the only one) so far
    assert records[1]["base_model"] == records[0]["model"]["path"]


def test_kd_settings_are_checked_against_a_rounds_and_images_are_refused(run, tmp_path):
    distill(run, DistillConfig(rounds=1, **KD), progress=False)  # a CE round
    settings = run / "distill" / "round-1" / "settings.json"
    old = json.loads(settings.read_text())
    for field in ("loss", "top_probs", "on_policy", "keep_best"):
        old.pop(field)  # a round made before these settings existed: it had their defaults
    settings.write_text(json.dumps(old))
    distill(run, DistillConfig(rounds=1, **KD), progress=False)  # the same as its defaults: read back
    with pytest.raises(ThicketsError, match=r"was made with loss 'ce', and this call asks loss 'kd-fkl'"):
        distill(run, DistillConfig(rounds=1, loss="kd-fkl", **KD), progress=False)
    with pytest.raises(ThicketsError, match="unknown --loss"):
        DistillConfig(loss="mse")


def test_keep_best_starts_each_round_from_the_model_best_on_validation(run, monkeypatch):
    from thickets.distill import rounds

    scores = {1: 0.5, 2: 0.2, 3: 0.4}
    bases = []

    def fake_round(r, folder, run_dir, config, model, *args):
        bases.append(model)
        folder.mkdir(parents=True)
        record = {"round": r, "val_score": scores[r], "model": {"path": f"model-of-round-{r}"}, "kept_this_round": 1}
        record |= {"tokens_generated": 0, "tokens_trained": 0, "test": {k: {"accuracy": 0.0} for k in ("base",)}}
        record["test"] |= {"ensemble": {"accuracy": 0.0, "k": 2}, "distilled": {"accuracy": 0.0}}
        (folder / "kept.jsonl").write_text("")
        return record

    monkeypatch.setattr(rounds, "_round", fake_round)
    monkeypatch.setattr(rounds, "plot_rounds", lambda *a: None)
    distill(run, DistillConfig(rounds=3, keep_best=True, **KD), progress=False)
    assert bases[1:] == ["model-of-round-1", "model-of-round-1"]  # round 2 scored worse than round 1
    assert json.loads((run / "distill" / "best.json").read_text())["round"] == 1
    shutil.rmtree(run / "distill")
    bases.clear()
    distill(run, DistillConfig(rounds=3, **KD), progress=False)
    assert bases[1:] == ["model-of-round-1", "model-of-round-2"]  # without it, the last round's model
