import json
import os

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
