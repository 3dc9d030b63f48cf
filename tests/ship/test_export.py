import json

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
    engine.perturb(spec)
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
    out = export_candidate(tmp_path / "run", 1, tmp_path / "best")
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
