"""Our decode loop over transformers' own forward gives, token for token, greedy `generate`'s tokens, on
tiny random models of every decoder family the paper's and users' models come from."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.support import make_tiny_tokenizer, tiny_text
from thickets.engines import hf_decode
from thickets.engines.transformers_engine import hf_generate_greedy

SYSTEM = "You are a careful assistant. Answer the question that follows in a few words only.\n"
PROMPTS = ["Hello there, how", "A", "Tell me about the weather in a long sentence, with detail", "What is 7 * 8?"]

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", {"sliding_window": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 8}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "sliding_window": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}


def random_model(cls, config):
    """A tiny random model, seeded, with weights large enough that rows end and differ."""
    torch.manual_seed(3)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    return model


def _tiny(family: str):
    config_name, model_name, extra = FAMILIES[family]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    tok = make_tiny_tokenizer()
    tok.padding_side = "left"
    config = getattr(transformers, config_name)(**tiny_text(tok), **extra)
    model = random_model(getattr(transformers, model_name), config)
    return model, tok


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    return request.param, *_tiny(request.param)


def _ours(model, tok, prompts, n, stop=(), **kw):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return hf_decode.generate_greedy(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        n,
        pad_token_id=tok.pad_token_id,
        tokenizer=tok,
        stop_strings=stop,
        **kw,
    )


def _theirs(model, tok, prompts, n, stop=()):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return hf_generate_greedy(model, tok, enc, n, stop)


def test_every_family_decodes_greedily_as_generate_does(family_model):
    family, model, tok = family_model
    assert hf_decode.supports(model), family
    for prompts in (PROMPTS, [SYSTEM + p for p in PROMPTS], PROMPTS[:1]):
        theirs = _theirs(model, tok, prompts, 20)
        assert torch.equal(_ours(model, tok, prompts, 20), theirs), (family, prompts)
        # rows leaving the batch early, and no prefix sharing, change nothing
        assert torch.equal(_ours(model, tok, prompts, 20, compact=lambda *a: True), theirs)
        assert torch.equal(_ours(model, tok, prompts, 20, share_prefix=False), theirs)


def test_stop_strings_end_rows_where_generate_ends_them(family_model):
    family, model, tok = family_model
    free = tok.batch_decode(_theirs(model, tok, PROMPTS, 24), skip_special_tokens=True)
    stop = tuple(sorted({t[3:5] for t in free if len(t) >= 5}))  # strings the rows do write
    assert stop, family
    theirs = _theirs(model, tok, PROMPTS, 24, stop)
    assert torch.equal(_ours(model, tok, PROMPTS, 24, stop), theirs)
    assert theirs.shape[1] < 24  # some row really stopped early


def test_the_engine_takes_our_loop_for_families_the_hand_written_decoder_lacks():
    from thickets.engines.transformers_engine import TransformersEngine

    model, tok = _tiny("qwen3")
    ours = TransformersEngine(model, tok, batch_size=3)
    plain = TransformersEngine(model, tok, batch_size=3, fast=False)
    assert ours.describe()["decoder"] == "hf_decode" and plain.describe()["decoder"] == "generate"
    prompts = [SYSTEM + p for p in PROMPTS]
    assert ours.generate(prompts, 16, stop=(".",)) == plain.generate(prompts, 16, stop=(".",))
