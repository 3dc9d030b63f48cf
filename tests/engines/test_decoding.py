"""Greedy means greedy whatever the model ships, and every engine feeds the model the same token ids."""

from __future__ import annotations

import pytest
import torch

from thickets.engines import fast_decode, render_prompt
from thickets.engines.transformers_engine import TransformersEngine
from thickets.models import load
from thickets.randopt.config import SearchConfig
from thickets.randopt.scoring import generate
from thickets.tasks.base import Example, Task

PROMPTS = ["The cat sat on", "Once upon a time", "1 2 3 4", "hello"]


def test_a_shipped_repetition_penalty_does_not_change_greedy_decoding(tiny_model_dir):
    """Qwen2.5-Instruct ships repetition_penalty=1.05; generate would apply it unless told otherwise."""
    model, tok, _ = load(str(tiny_model_dir))
    plain_fast = TransformersEngine(model, tok, batch_size=4).generate(PROMPTS, 16)
    plain_slow = TransformersEngine(model, tok, batch_size=4, fast=False).generate(PROMPTS, 16)
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = [int(t) for t in tok(" the", add_special_tokens=False).input_ids]
    shipped = model.generation_config
    fast = TransformersEngine(model, tok, batch_size=4)
    slow = TransformersEngine(model, tok, batch_size=4, fast=False)
    assert fast.fast and not slow.fast
    assert fast.generate(PROMPTS, 16) == slow.generate(PROMPTS, 16) == plain_fast == plain_slow
    assert model.generation_config is shipped and shipped.repetition_penalty == 3.0  # put back as it was
    # the shipped settings would have changed the text: what the fix prevents
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    penalised = model.generate(**enc, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(penalised[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert texts != plain_slow


@pytest.fixture()
def bos_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with a tokenizer that adds a BOS token (as Llama's and Gemma's do) and a chat
    template that writes the BOS text itself (as theirs do)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = "<|endoftext|>"
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    tok.bos_token = bos
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    out = tmp_path / "bos-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def fed_ids(monkeypatch, engine, prompts, special) -> list[list[int]]:
    """The token ids the transformers engine hands the model, padding removed, in prompt order."""
    from thickets.engines import prompt_token_ids

    seen = []

    def record(model, input_ids, attention_mask, max_new_tokens, **kw):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return input_ids.new_zeros((input_ids.shape[0], 0))

    monkeypatch.setattr(fast_decode, "generate_greedy", record)
    engine.generate(prompts, 2, add_special_tokens=special)
    by_len = sorted(
        range(len(prompts)), key=lambda i: -len(prompt_token_ids(engine.tokenizer, [prompts[i]], special)[0])
    )
    out = [None] * len(prompts)
    for i, ids in zip(by_len, seen):
        out[i] = ids
    return out


def test_both_engines_feed_one_bos_for_chat_and_raw_prompts(bos_model_dir, monkeypatch):
    from thickets.engines.experimental.vllm_engine import vllm_requests

    model, tok, _ = load(str(bos_model_dir))
    engine = TransformersEngine(model, tok, batch_size=8)
    bos = tok.bos_token_id
    task = Task()  # the defaults: no stop strings, no system prompt
    examples = [Example(f"e{i}", p) for i, p in enumerate(PROMPTS)]
    for chat in (True, False):
        config = SearchConfig(model=str(bos_model_dir), task="toy", chat_template=chat, max_new_tokens=2)
        calls = []
        monkeypatch.setattr(
            engine,
            "generate",
            lambda prompts, n, stop=(), add_special_tokens=False, calls=calls: (
                calls.append((prompts, add_special_tokens)) or [""] * len(prompts)
            ),
        )
        generate(engine, task, examples, config)
        prompts, special = calls[0]
        monkeypatch.undo()
        ids = fed_ids(monkeypatch, engine, prompts, special)
        monkeypatch.undo()
        vllm_ids = [r["prompt_token_ids"] for r in vllm_requests(tok, prompts, special)]
        assert ids == vllm_ids
        for row in ids:
            assert row[0] == bos and row.count(bos) == 1, (chat, row[:4])  # base models see their BOS, once
    assert render_prompt(tok, "hi").startswith(tok.bos_token)  # the chat template wrote it


def test_padding_does_not_change_what_a_prompt_is_fed(tiny_model_dir, monkeypatch):
    from thickets.engines import prompt_token_ids

    model, tok, _ = load(str(tiny_model_dir))
    engine = TransformersEngine(model, tok, batch_size=8)
    ids = fed_ids(monkeypatch, engine, PROMPTS, False)
    assert ids == prompt_token_ids(tok, PROMPTS, False)
    assert all(isinstance(t, int) for row in ids for t in row)
    assert torch.tensor(ids[3]).numel() == len(tok("hello", add_special_tokens=False).input_ids)
