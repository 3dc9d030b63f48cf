"""Low-rank experts batched together answer as each expert alone does."""

from __future__ import annotations

import re

import pytest
import torch

from tests.engines.test_hf_decode import _tiny, random_model
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


# -- every architecture, every dtype: one definition of a low-rank expert ------------------------------

#: tiny random models of the architectures whose matrices are not all Linear: GPT-2 (Conv1D), OPT (a
#: learned position embedding called with the attention mask), Mixtral (a router and 3-D expert weights)
OTHERS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=512)),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32),
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
    ),
}


def _other(family: str, dtype: torch.dtype = torch.float32) -> TransformersEngine:
    import transformers

    from tests.support import make_tiny_tokenizer

    config_name, model_name, extra = OTHERS[family]
    tok = make_tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = getattr(transformers, config_name)(vocab_size=len(tok), max_position_embeddings=512, **ids, **extra)
    model = random_model(getattr(transformers, model_name), config)
    return TransformersEngine(model.to(dtype), tok, batch_size=3)


def _merged(engine, specs, prompts, n):
    out = []
    for spec in specs:
        engine.perturb(spec, merge=True)
        try:
            out.append(engine.generate(prompts, n))
        finally:
            engine.restore()
    return out


def test_gpt2s_conv1d_matrices_are_all_moved_and_batched_as_each_expert_alone():
    engine = _other("gpt2")
    specs = [PerturbationSpec(s, 0.05, "lowrank", rank=2) for s in (1, 2, 3)]
    together = engine.generate_population(specs, PROMPTS, 12)
    assert together == _alone(engine, specs, PROMPTS, 12)
    assert together == _merged(engine, specs, PROMPTS, 12)  # float32: the adapter unmerged answers as merged
    assert together[0] != engine.generate(PROMPTS, 12)
    # every one of its matrices carries the change: the attention's and the MLP's Conv1D, both embeddings
    from thickets.engines.lowrank_sites import lowrank_sites

    kinds = {s.name: s.kind for s in lowrank_sites(engine.model, engine.params, specs[0].filter.keeps)}
    assert kinds["transformer.h.0.attn.c_attn.weight"] == "conv1d" and kinds["transformer.wpe.weight"] == "embedding"
    assert len(kinds) == sum(p.dim() >= 2 for p in engine.params.values())


@pytest.mark.parametrize(
    "family, uncovered, exclude",
    [
        ("opt", "model.decoder.embed_positions.weight (OPTLearnedPositionalEmbedding", ("*embed_positions*",)),
        ("mixtral", "(MixtralExperts, MixtralTopKRouter", ("*.mlp.experts.*", "*.mlp.gate.*")),
    ],
)
def test_matrices_no_adapter_can_carry_are_refused_by_name_and_can_be_left_out(family, uncovered, exclude):
    from thickets.errors import ThicketsError

    engine = _other(family)
    spec = PerturbationSpec(1, 0.05, "lowrank", rank=2)
    for attempt in (lambda: engine.perturb(spec), lambda: engine.generate_population([spec, spec], PROMPTS, 4)):
        with pytest.raises(ThicketsError, match=f"cannot move .*{re.escape(uncovered)}.* --exclude"):
            attempt()
        assert engine._adapter is None and not engine._touched  # nothing applied
    left_out = [PerturbationSpec(s, 0.05, "lowrank", ParamFilter(exclude=exclude), rank=2) for s in (1, 2)]
    together = engine.generate_population(left_out, PROMPTS, 8)
    assert together == _alone(engine, left_out, PROMPTS, 8) == _merged(engine, left_out, PROMPTS, 8)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_in_bfloat16_batched_alone_and_served_experts_are_one_model_and_keep_the_whole_change(
    family, tiny_model_dir, tiny_qwen2_dir
):
    if family == "gpt2":
        engine = _other("gpt2", torch.bfloat16)
    else:
        model, tok, _ = load(str(tiny_model_dir if family == "llama" else tiny_qwen2_dir), dtype="bfloat16")
        engine = TransformersEngine(model, tok, batch_size=3)
    specs = [PerturbationSpec(s, 2e-3, "lowrank", rank=2) for s in (1, 2, 3, 4)]
    together = engine.generate_population(specs, PROMPTS, 12)
    assert together == _alone(engine, specs, PROMPTS, 12)
    # the change is made in float32 and added to each output rounded once, never to the bf16 weights
    name = next(
        n for n in engine.params if n.endswith("layers.0.mlp.down_proj.weight") or n.endswith("h.0.mlp.c_proj.weight")
    )
    before = engine.params[name].detach().clone()
    engine.perturb(specs[0])
    assert torch.equal(engine.params[name], before)
    engine.restore()


def test_a_half_precision_output_gets_the_float32_change_rounded_once():
    """(x @ B) @ (s A).T made in float32 and added to the bf16 output in float32, rounded once: adding it in
    bf16 would round twice, and a small change would mostly vanish."""
    from thickets.engines.device_noise import lowrank_factors_on
    from thickets.engines.lowrank_sites import adapter_scale
    from thickets.engines.population import PopulationBatch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False)).to(torch.bfloat16)
    params = dict(model.named_parameters())
    spec = PerturbationSpec(3, 2e-3, "lowrank", rank=4)
    x = torch.randn(5, 64).to(torch.bfloat16)
    with torch.no_grad():
        base = model(x)
        f = lowrank_factors_on(spec, "0.weight", (48, 64), x.device)
        want = (base.float() + (x.float() @ f.b) @ (f.a * float(adapter_scale(spec))).T).to(torch.bfloat16)
        with PopulationBatch(model, params, [spec]):
            got = model(x)
    assert torch.equal(got, want) and not torch.equal(got, base)
