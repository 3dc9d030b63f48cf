"""The fast greedy decoder gives, token for token, what transformers' greedy generate gives."""

from __future__ import annotations

import pytest
import torch

from thickets.engines import fast_decode, greedy
from thickets.engines.base import cut_at_stop
from thickets.engines.transformers_engine import TransformersEngine, hf_generate_greedy
from thickets.models import load
from thickets.noise import PerturbationSpec

PROMPTS = [
    "Hello there, how",
    "A",
    "Tell me about the weather in a long sentence please, with some detail",
    "B c d",
    "What is 7 times 8?",
    "Write a poem\n",
    "x",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def loaded(request, tiny_model_dir, tiny_qwen2_dir):
    model, tok, _ = load(str(tiny_model_dir if request.param == "llama" else tiny_qwen2_dir))
    tok.padding_side = "left"
    assert fast_decode.supports(model)
    return model, tok


def _encode(tok, prompts):
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def hf_tokens(model, tok, prompts, n, stop=()):
    return hf_generate_greedy(model, tok, _encode(tok, prompts), n, stop)


def fast_tokens(model, tok, prompts, n, stop=(), **kw):
    enc = _encode(tok, prompts)
    return fast_decode.generate_greedy(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        n,
        pad_token_id=tok.pad_token_id,
        tokenizer=tok,
        stop_strings=stop,
        **kw,
    )


def assert_same(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize(
    "prompts", [PROMPTS[:1], PROMPTS[2:3], PROMPTS, PROMPTS[3:5]], ids=["b1", "b1-long", "b7", "b2"]
)
def test_same_tokens_as_generate(loaded, prompts):
    model, tok = loaded
    assert_same(fast_tokens(model, tok, prompts, 16), hf_tokens(model, tok, prompts, 16))


def test_same_tokens_without_padding(loaded):
    model, tok = loaded
    prompts = ["one two three", "four five six"]
    enc = _encode(tok, prompts)
    assert bool(enc["attention_mask"].all())
    assert_same(fast_tokens(model, tok, prompts, 12), hf_tokens(model, tok, prompts, 12))


def _stops_from(tok, texts):
    """Stop strings the model does produce, part-way through: two characters from the middle of outputs."""
    stops = []
    for t in texts:
        if len(t) >= 8:
            stops.append(t[len(t) // 2 : len(t) // 2 + 2])
    return tuple(dict.fromkeys(stops))[:3]


@pytest.mark.parametrize("always_compact", [True, False])
def test_stop_strings_end_rows_as_generate_does(loaded, always_compact):
    model, tok = loaded
    free = tok.batch_decode(hf_tokens(model, tok, PROMPTS, 24), skip_special_tokens=True)
    stop = _stops_from(tok, free)
    assert stop
    hf = hf_tokens(model, tok, PROMPTS, 24, stop)
    assert (hf == tok.pad_token_id).any(), "the stop strings should end some rows early"
    ours = fast_tokens(model, tok, PROMPTS, 24, stop, compact=lambda *a: always_compact)
    assert_same(ours, hf)
    texts = [cut_at_stop(t, stop) for t in tok.batch_decode(ours, skip_special_tokens=True)]
    assert texts == [cut_at_stop(t, stop) for t in tok.batch_decode(hf, skip_special_tokens=True)]


@pytest.mark.parametrize("always_compact", [True, False])
def test_eos_ends_rows_early(loaded, always_compact):
    model, tok = loaded
    free = hf_tokens(model, tok, PROMPTS, 20)
    # make tokens the model really emits at different steps the end-of-sequence ids
    eos = sorted({int(free[0, 3]), int(free[2, 9]), int(free[4, 14])})
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        hf = hf_tokens(model, tok, PROMPTS, 20)
        assert (hf == tok.pad_token_id).any()
        ours = fast_tokens(model, tok, PROMPTS, 20, compact=lambda *a: always_compact)
        assert_same(ours, hf)
        # every row ending early: the output is as long as the last row's end, not max_new_tokens
        short = hf_tokens(model, tok, PROMPTS[:1], 20)
        assert_same(fast_tokens(model, tok, PROMPTS[:1], 20), short)
        assert short.shape[1] == 1 + min(i for i, t in enumerate(free[0].tolist()) if t in eos) <= 4
    finally:
        model.generation_config.eos_token_id = saved


def test_eos_and_stop_strings_together(loaded):
    model, tok = loaded
    free = hf_tokens(model, tok, PROMPTS, 20)
    stop = _stops_from(tok, tok.batch_decode(free, skip_special_tokens=True))[:1]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [int(free[1, 5]), int(free[6, 2])]
    try:
        assert_same(fast_tokens(model, tok, PROMPTS, 20, stop), hf_tokens(model, tok, PROMPTS, 20, stop))
    finally:
        model.generation_config.eos_token_id = saved


def test_engine_fast_and_generate_paths_agree(tiny_model_dir):
    fast, _ = _engines(tiny_model_dir, fast=True)
    slow, _ = _engines(tiny_model_dir, fast=False)
    assert fast.describe()["fast_decode"] is True and slow.describe()["fast_decode"] is False
    free = slow.generate(PROMPTS, 16)
    stop = _stops_from(slow.tokenizer, free)
    for s in [(), stop, ("\n",)]:
        assert fast.generate(PROMPTS, 16, stop=s) == slow.generate(PROMPTS, 16, stop=s)


def _engines(path, fast):
    m, tok, identity = load(str(path))
    return TransformersEngine(m, tok, batch_size=3, fast=fast), identity


def test_a_perturbed_model_decodes_as_generate_on_it(tiny_model_dir):
    """The decoder reads the live parameters: after perturb() it follows the perturbed weights."""
    engine, _ = _engines(tiny_model_dir, fast=True)
    tok = engine.tokenizer
    base = fast_tokens(engine.model, tok, PROMPTS, 12)
    engine.perturb(PerturbationSpec(3, 0.2))
    try:
        moved = fast_tokens(engine.model, tok, PROMPTS, 12)
        assert moved.shape != base.shape or not torch.equal(moved, base)
        assert_same(moved, hf_tokens(engine.model, tok, PROMPTS, 12))
        texts = engine.generate(PROMPTS, 12)
        engine.fast = False
        assert texts == engine.generate(PROMPTS, 12)
        engine.fast = True
    finally:
        engine.restore()
    assert_same(fast_tokens(engine.model, tok, PROMPTS, 12), base)


def test_models_the_hand_written_decoder_lacks_take_our_loop_over_their_own_forward(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    assert not fast_decode.supports(model)
    engine = TransformersEngine(model, tok, batch_size=2)
    assert engine.describe()["decoder"] == "hf_decode"
    prompts = ["a b", "c", "Hello there, how are you"]
    assert engine.generate(prompts, 8) == TransformersEngine(model, tok, batch_size=2, fast=False).generate(prompts, 8)


@pytest.mark.slow
def test_same_tokens_as_generate_on_the_embedded_model():
    from thickets.engines.base import render_prompt
    from thickets.models import EMBEDDED_NAME

    model, tok, _ = load(EMBEDDED_NAME)
    tok.padding_side = "left"
    assert fast_decode.supports(model)
    prompts = [
        render_prompt(tok, q)
        for q in ["What is 12 times 7?", "Name a color.", "Write one sentence about the sea, then stop.", "2+2="]
    ]
    assert_same(fast_tokens(model, tok, prompts, 24), hf_tokens(model, tok, prompts, 24))
    assert_same(fast_tokens(model, tok, prompts, 24, ("\n", ".")), hf_tokens(model, tok, prompts, 24, ("\n", ".")))


SYSTEM = "You are a careful assistant. Answer the question that follows in a few words only.\n"


@pytest.mark.parametrize("always_compact", [True, False])
def test_a_shared_prefix_is_run_once_and_gives_the_same_tokens(loaded, always_compact):
    """Chat-templated prompts share their system prompt: it is prefilled once for the batch."""
    model, tok = loaded
    prompts = [SYSTEM + p for p in PROMPTS]
    enc = _encode(tok, prompts)
    shared = greedy.shared_prefix(enc["input_ids"], enc["attention_mask"].bool())
    assert shared >= greedy.MIN_SHARED_PREFIX
    assert shared < int(enc["attention_mask"].sum(1).min())  # every row keeps a token of its own
    hf = hf_tokens(model, tok, prompts, 16)
    assert_same(fast_tokens(model, tok, prompts, 16, compact=lambda *a: always_compact), hf)
    assert_same(fast_tokens(model, tok, prompts, 16, share_prefix=False), hf)
    stop = _stops_from(tok, tok.batch_decode(hf, skip_special_tokens=True))
    assert_same(fast_tokens(model, tok, prompts, 16, stop), hf_tokens(model, tok, prompts, 16, stop))
    # all rows the same length: no padding anywhere, the prefix still shared
    same_len = [SYSTEM + "one two", SYSTEM + "three four"]
    assert_same(fast_tokens(model, tok, same_len, 12), hf_tokens(model, tok, same_len, 12))


def test_shared_prefix_length():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 1, 2], [0, 5, 6, 7, 8, 3]])
    ok = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]).bool()
    assert greedy.shared_prefix(ids, ok) == 3
    assert greedy.shared_prefix(ids[:1], ok[:1]) == 0  # one row: nothing to share
    same = torch.tensor([[1, 2, 3], [1, 2, 3]])
    assert greedy.shared_prefix(same, torch.ones_like(same).bool()) == 2  # the last token stays each row's
