import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from thickets.engines.transformers_engine import canonical_parameters
from thickets.errors import ThicketsError
from thickets.noise import PerturbationSpec
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.ship.export import RECIPE_NAME, export_candidate, export_spec, rebuild


def _equal_to_perturbed(folder_model, engine, spec):
    engine.perturb(spec, merge=True)
    try:
        want = {n: p.detach().clone() for n, p in canonical_parameters(engine.model).items()}
    finally:
        engine.restore()
    got = canonical_parameters(folder_model)
    return set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_exported_candidate_loads_in_plain_transformers_with_the_perturbed_weights(
    tiny_engine, tiny_model_dir, tmp_path
):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=3, sigmas=(0.05,), val_size=3, max_new_tokens=4
    )
    result = search(config, tmp_path / "run", engine=tiny_engine, progress=False)
    old = os.umask(0o022)
    try:
        out = export_candidate(tmp_path / "run", 1, tmp_path / "best")
    finally:
        os.umask(old)
    # readable by a server running as another user, as a plain save_pretrained leaves it (not 0600 in 0700)
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {"0o644"}
    assert out.stat().st_mode & 0o777 == 0o755
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    best = result.ranked[0]
    assert _equal_to_perturbed(model, tiny_engine, config.candidate(best.idx))
    recipe = json.loads((out / RECIPE_NAME).read_text())
    assert recipe["seed"] == best.seed and recipe["sigma"] == best.sigma
    assert recipe["base_model"]["sha256"] and recipe["noise_version"]
    rebuilt, _ = rebuild(out / RECIPE_NAME)
    assert all(
        torch.equal(a, b) for a, b in zip(canonical_parameters(rebuilt).values(), canonical_parameters(model).values())
    )


def test_export_by_seed_and_sigma_and_refusals(tiny_engine, tiny_model_dir, tmp_path):
    spec = PerturbationSpec(123, 0.01)
    out = export_spec(str(tiny_model_dir), spec, tmp_path / "m")
    assert _equal_to_perturbed(AutoModelForCausalLM.from_pretrained(out), tiny_engine, spec)
    with pytest.raises(ThicketsError, match="already exists"):
        export_spec(str(tiny_model_dir), spec, tmp_path / "m")


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # tied embeddings and head; an untied head with biases
def test_a_lowrank_expert_exports_as_a_peft_adapter_whose_merge_is_the_perturbed_model(
    family, tiny_model_dir, tiny_qwen2_dir, tmp_path
):
    from peft import PeftModel

    from thickets.engines import load_engine

    base_dir = tiny_model_dir if family == "llama" else tiny_qwen2_dir
    engine, _ = load_engine(str(base_dir))
    spec = PerturbationSpec(77, 0.05, "lowrank", rank=4)
    out = export_spec(str(base_dir), spec, tmp_path / "m")
    merged_folder = AutoModelForCausalLM.from_pretrained(out)
    assert _equal_to_perturbed(merged_folder, engine, spec)
    assert json.loads((out / RECIPE_NAME).read_text())["rank"] == 4

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 9, 33]])
    engine.perturb(spec)  # the expert as thickets scores it: the adapter applied unmerged
    try:
        with torch.no_grad():
            scored = engine.model(ids).logits
    finally:
        engine.restore()
    with torch.no_grad():
        torch.testing.assert_close(scored, merged_folder(ids).logits, rtol=0, atol=1e-4)
        if family == "qwen2":  # untied: peft's adapter unmerged is the expert thickets scores
            torch.testing.assert_close(peft_model(ids).logits, scored, rtol=0, atol=1e-5)
    merged = canonical_parameters(peft_model.merge_and_unload())
    want = canonical_parameters(merged_folder)
    base = canonical_parameters(AutoModelForCausalLM.from_pretrained(base_dir))
    assert set(merged) == set(want)
    for name in want:
        # float32 rounding of another order of products, far below the perturbation itself
        torch.testing.assert_close(merged[name], want[name], rtol=0, atol=1e-5)
        if want[name].dim() == 1:  # vectors are never perturbed
            assert torch.equal(merged[name], base[name])
        else:
            assert not torch.equal(want[name], base[name])


def _readme_block(after: str) -> str:
    import re

    text = (Path(__file__).parents[2] / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(after) :], re.S).group(1)


def test_the_readmes_adapter_snippet_runs_as_written(tiny_model_dir, tmp_path, monkeypatch):
    """AutoPeftModelForCausalLM loads the adapter alone: it names a loadable base and its task type."""
    from thickets.ship.export import export_base

    config = SearchConfig(
        model=str(tiny_model_dir),
        task="toy",
        population=2,
        sigmas=(0.05,),
        val_size=2,
        max_new_tokens=4,
        strategy="lowrank",
        rank=2,
    )
    search(config, tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path)
    export_candidate(tmp_path / "run", 1, "best-model")
    adapter = json.loads((tmp_path / "best-model" / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and (Path(adapter["base_model_name_or_path"]) / "config.json").is_file()
    scope: dict = {}
    exec(_readme_block("also writes `adapter/`, a peft LoRA adapter"), scope)
    want = canonical_parameters(AutoModelForCausalLM.from_pretrained("best-model"))
    got = canonical_parameters(scope["model"])
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5)
    # shipped elsewhere: the base written as a folder, and the adapter naming it
    export_base(str(tiny_model_dir), "base-model")
    export_candidate(tmp_path / "run", 1, "shipped", adapter_base="base-model")
    named = json.loads((tmp_path / "shipped" / "adapter" / "adapter_config.json").read_text())
    assert named["base_model_name_or_path"] == "base-model"
    base = canonical_parameters(AutoModelForCausalLM.from_pretrained("base-model"))
    original = canonical_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert all(torch.equal(base[n], original[n]) for n in original)


def test_exports_carry_the_keys_transformers_4_reads_and_how_the_run_prompted(tiny_model_dir, tmp_path):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=2, sigmas=(0.05,), val_size=2, max_new_tokens=5
    )
    search(config, tmp_path / "run", progress=False)
    out = export_candidate(tmp_path / "run", 1, tmp_path / "best")
    written = json.loads((out / "config.json").read_text())
    rope = written.get("rope_parameters") or {}
    assert written["rope_theta"] == rope.get("rope_theta", written["rope_theta"])  # 4.x reads this one
    assert written["torch_dtype"] == written.get("dtype", written["torch_dtype"])
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer.get("tokenizer_class") in (None, "PreTrainedTokenizerFast")
    if tokenizer.get("tokenizer_class"):  # what 4.x's fast tokenizer would otherwise give generate()
        assert tokenizer["model_input_names"] == ["input_ids", "attention_mask"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["max_new_tokens"] == 5
    prompt = json.loads((out / "thickets_prompt.json").read_text())
    from thickets.randopt.scoring import task_for

    task = task_for(config)
    assert prompt["stop"] == list(task.stop) and prompt["system_prompt"] == task.system_prompt
    assert prompt["max_new_tokens"] == 5 and isinstance(prompt["chat_template"], bool)


def test_legacy_keys_for_every_rope_layout():
    from thickets.ship.portable import legacy_config_keys

    assert legacy_config_keys({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}) == {"rope_theta": 1e5}
    scaled = {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}
    assert legacy_config_keys({"rope_parameters": scaled}) == {
        "rope_theta": 5e5,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
    }
    gemma3 = {
        "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
    }
    assert legacy_config_keys({"rope_parameters": gemma3, "dtype": "bfloat16"}) == {
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "torch_dtype": "bfloat16",
    }
    assert legacy_config_keys({"rope_parameters": {"rope_theta": 1e5}, "rope_theta": 7.0}) == {}  # never overwritten
