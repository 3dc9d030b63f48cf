"""`thickets compare`: each method stops at the budget, and the token accounting adds up."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from thickets.baselines.compare import CompareConfig, compare, run_distilled, run_randopt
from thickets.randopt.store import RunStore


def test_budget_accounting_adds_up(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    cfg = CompareConfig(
        model=str(tiny_model_dir),
        task="toy",
        budget=60,
        val_size=4,
        test_size=4,
        max_new_tokens=3,
        top_k=2,
        es_population=2,
        grpo_num_generations=2,
        grpo_prompts_per_step=1,
    )
    result = compare(cfg, tmp_path, progress=False)
    rows = {r["method"].split()[0]: r for r in result["rows"]}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def count(texts):
        return sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)

    # RandOpt: every stored validation completion counted, and it stopped at the first candidate past the budget
    with RunStore.open(tmp_path / "randopt", write=False) as store:
        n = len(store.candidates())
        per_model = [count(store.completions(m, "val").values()) for m in ["base", *(f"cand:{i}" for i in range(n))]]
    r = rows["RandOpt"]
    assert r["train_tokens"] == sum(per_model) >= cfg.budget > sum(per_model[:-1])
    assert r["candidates"] == n and r["test_answers_per_question"] == 2
    # distilled RandOpt: RandOpt's search as it stood at half the budget, then traces and training on the rest
    d = rows["distilled"]
    spent_after = r["spent_after"]
    assert spent_after[-1] == r["train_tokens"] and spent_after == sorted(spent_after)
    cut = d["candidates"]
    assert spent_after[cut - 1] >= cfg.budget / 2 > ([0, *spent_after])[cut - 1]
    assert d["tokens"]["search"] == spent_after[cut - 1]
    assert d["train_tokens"] == sum(d["tokens"].values())
    with RunStore.open(tmp_path / "distilled", write=False) as store:
        assert len(store.candidates()) == cut == store.config.population  # the copy was cut, not searched on
    # the random tiny model answers nothing right at this sigma: nothing trained, the traces' tokens still paid
    assert d["not_trained"].startswith("round 1 kept no new traces") and d["accuracy"] == rows["base"]["accuracy"]
    traces = [
        json.loads(line)["completion"]
        for p in (tmp_path / "distilled").glob("distill/round-1/traces-*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert len(traces) == d["train_questions"] * cfg.top_k and d["tokens"]["traces"] == count(traces)
    # ES: the iterations' tokens add up, and the last iteration is the one that crossed the budget
    es_log = json.loads((tmp_path / "es" / "es.json").read_text())
    per_it = [it["tokens"] for it in es_log["iterations"]]
    assert rows["ES"]["train_tokens"] == sum(per_it) >= cfg.budget > sum(per_it[:-1])
    # GRPO: steps sized so that even full-length completions stay within the budget
    assert 0 < rows["GRPO"]["train_tokens"] <= cfg.budget
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])


def _randopt(cfg: CompareConfig, out):
    """RandOpt's part of a comparison on the toy task (4 validation, 5 test questions): what the methods
    derived from its search start from."""
    from thickets.engines import load_engine
    from thickets.randopt.config import SearchConfig
    from thickets.randopt.scoring import task_for
    from thickets.tasks.splits import make_splits

    search_cfg = SearchConfig(
        model=cfg.model, task="toy", population=1, sigmas=cfg.sigmas, val_size=4, max_new_tokens=4
    )
    task = task_for(search_cfg)
    _, test = make_splits(task, 0, 4, 5)
    engine, _ = load_engine(cfg.model, batch_size=4)
    return engine, task, search_cfg, run_randopt(cfg, out, engine, task, test, search_cfg)


def test_distilled_randopt_spends_the_rest_of_the_budget_on_traces_and_training(tiny_model_dir, tmp_path):

    cfg = CompareConfig(
        model=str(tiny_model_dir),
        task="toy",
        budget=400,
        val_size=4,
        test_size=5,
        max_new_tokens=4,
        top_k=2,
        sigmas=(0.1,),
        distill_search_share=0.25,
    )
    engine, task, search_cfg, randopt = _randopt(cfg, tmp_path)
    base = {"accuracy": 0.0, "test_tokens_per_question": 4.0}
    d = run_distilled(cfg, tmp_path, engine, task, search_cfg, randopt, base)
    record = json.loads((tmp_path / "distilled" / "distill" / "round-1" / "round.json").read_text())
    assert "not_trained" not in d and d["train_questions"] > 1
    assert d["tokens"] == {
        "search": randopt["spent_after"][d["candidates"] - 1],
        "traces": record["tokens_generated"],
        "trained": record["tokens_trained"],
    }
    assert d["train_tokens"] == sum(d["tokens"].values())
    assert d["tokens"]["search"] >= cfg.budget / 4 and d["tokens"]["trained"] > 0
    # the train split's size assumes every answer is kept (here 14 of 28 were): the method stays within its budget
    assert record["tokens_generated"] <= d["train_questions"] * cfg.top_k * cfg.max_new_tokens
    assert d["train_tokens"] <= cfg.budget
    assert d["accuracy"] == record["test"]["distilled"]["accuracy"] and d["traces_kept"] == record["kept_total"] > 0
    assert d["test_answers_per_question"] == 1


def test_merged_randopt_merges_the_search_that_leaves_room_for_choosing_its_scale(tiny_model_dir, tmp_path):
    from thickets.baselines.compare import run_merged
    from thickets.ship.merge_config import SCALES

    cfg = CompareConfig(
        model=str(tiny_model_dir), task="toy", budget=300, val_size=4, test_size=5, max_new_tokens=4, top_k=2,
        sigmas=(0.1,), merge_method="mean",
    )  # fmt: skip
    *_, randopt = _randopt(cfg, tmp_path)
    m = run_merged(cfg, tmp_path, randopt, {"accuracy": 0.0, "test_tokens_per_question": 4.0})
    assert "not_merged" not in m
    recipe = json.loads((tmp_path / "merged_model" / "thickets_merge.json").read_text())
    gate = recipe["gate"]
    spent = randopt["spent_after"]
    per_pass = spent[-1] / len(spent)
    # the most candidates whose search leaves room for a validation pass at each scale, and no more
    assert spent[m["candidates"] - 1] + len(SCALES) * per_pass <= cfg.budget
    assert m["candidates"] == len(spent) or spent[m["candidates"]] + len(SCALES) * per_pass > cfg.budget
    assert m["tokens"] == {
        "search": spent[m["candidates"] - 1],
        "scales": sum(t["tokens"] for t in gate["scales_tried"]),
    }
    assert m["train_tokens"] == sum(m["tokens"].values()) and m["tokens"]["scales"] > 0
    assert gate["gate_size"] == cfg.test_size and len(gate["experts"]) == min(cfg.top_k, m["candidates"])
    assert m["accuracy"] == gate["rows"][-1]["accuracy"] and m["test_answers_per_question"] == 1


def test_methods_are_checked_before_anything_runs():
    from thickets.errors import ThicketsError

    with pytest.raises(ThicketsError, match="unknown method 'ppo'"):
        CompareConfig(methods=("randopt", "ppo"))
    with pytest.raises(ThicketsError, match="starts from RandOpt's own search: add randopt"):
        CompareConfig(methods=("distilled", "es"))
    with pytest.raises(ThicketsError, match="merged RandOpt starts from RandOpt's own search"):
        CompareConfig(methods=("merged",))
    with pytest.raises(ThicketsError, match="distill-search-share must be in"):
        CompareConfig(distill_search_share=0)


def test_a_merge_that_finds_nothing_to_merge_answers_as_the_base_and_counts_the_search_it_spent(
    tiny_model_dir, tmp_path, monkeypatch
):
    from thickets.baselines.compare import run_merged
    from thickets.errors import ThicketsError
    from thickets.ship import merge as merge_module

    cfg = CompareConfig(
        model=str(tiny_model_dir), task="toy", budget=300, val_size=4, test_size=5, max_new_tokens=4, top_k=2,
        sigmas=(0.1,), merge_method="mean",
    )  # fmt: skip
    *_, randopt = _randopt(cfg, tmp_path)

    def nothing(settings, progress=True):
        raise ThicketsError("no expert of the top 2 beats the base on validation")

    monkeypatch.setattr(merge_module, "merge", nothing)
    base = {"accuracy": 0.25, "test_tokens_per_question": 4.0}
    m = run_merged(cfg, tmp_path, randopt, base)
    assert m["not_merged"] == "no expert of the top 2 beats the base on validation"
    assert m["accuracy"] == 0.25 and m["candidates"] >= 1
    assert m["train_tokens"] == randopt["spent_after"][m["candidates"] - 1]
    # the search it stood on took time, and that time is the method's
    assert m["seconds"] >= randopt["seconds_after"][m["candidates"] - 1] > 0
