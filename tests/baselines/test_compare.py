"""`thickets compare`: each method stops at the budget, and the token accounting adds up."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from thickets.baselines.compare import CompareConfig, compare
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
    # ES: the iterations' tokens add up, and the last iteration is the one that crossed the budget
    es_log = json.loads((tmp_path / "es" / "es.json").read_text())
    per_it = [it["tokens"] for it in es_log["iterations"]]
    assert rows["ES"]["train_tokens"] == sum(per_it) >= cfg.budget > sum(per_it[:-1])
    # GRPO: steps sized so that even full-length completions stay within the budget
    assert 0 < rows["GRPO"]["train_tokens"] <= cfg.budget
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])
