"""Low-rank experts batched together answer as each expert alone does."""

from __future__ import annotations

import pytest
import torch

from tests.engines.test_hf_decode import _tiny
from thickets.engines.transformers_engine import TransformersEngine
from thickets.models import load
from thickets.noise import ParamFilter, PerturbationSpec

SYSTEM = "You are a careful assistant. Answer the question that follows in a few words only.\n"
PROMPTS = [SYSTEM + p for p in ("Hello there, how", "A", "Tell me about the weather, with detail", "What is 7 * 8?")]


def _alone(engine, specs, prompts, n, stop=()):
    out = []
    for spec in specs:
        engine.perturb(spec)
        try:
            out.append(engine.generate(prompts, n, stop))
        finally:
            engine.restore()
    return out


@pytest.fixture(params=["llama", "qwen2", "gemma2"])
def engine(request, tiny_model_dir, tiny_qwen2_dir):
    if request.param == "gemma2":  # scaled embeddings, sliding windows, soft-capped logits
        model, tok = _tiny("gemma2")
    else:
        model, tok, _ = load(str(tiny_model_dir if request.param == "llama" else tiny_qwen2_dir))
    return TransformersEngine(model, tok, batch_size=3)


def test_a_population_batch_gives_each_experts_own_completions(engine):
    specs = [PerturbationSpec(s, 0.05, "lowrank", rank=r) for s, r in ((1, 2), (2, 2), (3, 4))]
    together = engine.generate_population(specs, PROMPTS, 16, stop=(".",))
    alone = _alone(engine, specs, PROMPTS, 16, stop=(".",))
    assert together == alone
    assert len({tuple(t) for t in together}) > 1, "the experts should differ on this model"
    base = engine.generate(PROMPTS, 16, stop=(".",))
    assert any(t != base for t in together)


def test_filters_are_honoured_and_the_base_weights_never_move(engine):
    before = {n: p.detach().clone() for n, p in engine.params.items()}
    only_mlp = ParamFilter(include=("*mlp*",))
    specs = [PerturbationSpec(s, 0.1, "lowrank", filter=only_mlp, rank=2) for s in (5, 6)]
    assert engine.generate_population(specs, PROMPTS[:2], 8) == _alone(engine, specs, PROMPTS[:2], 8)
    assert all(torch.equal(before[n], p) for n, p in engine.params.items())
    with pytest.raises(ValueError, match="low-rank"):
        engine.generate_population([PerturbationSpec(1, 0.1)], PROMPTS, 4)
