"""Greedy decoding for any causal LM transformers supports, driving the model's own forward from our loop.

`generate` is generic but pays for it on every step; the hand-written decoder in fast_decode is fast
but knows two architectures. This loop keeps what made fast_decode fast and leaves the layers to
transformers: a preallocated StaticCache (no per-step concatenation), a prompt prefix all rows share
run once and its cache rows copied, rows that end (EOS or a stop string, decided as `generate`
decides) leaving the batch, only the last position's logits computed. Attention, norms, rotary
embeddings, sliding windows and logit soft-capping are the model's, so Qwen3, OLMo-2/3, Gemma-2/3,
Mistral and Phi decode greedily with the tokens `generate` gives.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from thickets.engines.greedy import (
    MIN_SHARED_PREFIX,
    Stops,
    compact_worth_it,
    decode_steps,
    group_leaders,
    shared_prefix,
)


def supports(model: Any) -> bool:
    """Decoder-only models whose layers a StaticCache can hold (everything but recurrent/linear attention)."""
    from transformers.cache_utils import StaticCache

    if getattr(model, "training", False) or getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        cache = StaticCache(config=model.config, max_cache_len=2)
    except (ValueError, KeyError, TypeError, NotImplementedError):
        return False
    return all(hasattr(layer, "keys") or hasattr(layer, "lazy_initialization") for layer in cache.layers)


def _layers_with_rows(cache: Any) -> list[Any]:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def _keep_rows(cache: Any, rows: torch.Tensor) -> None:
    for layer in _layers_with_rows(cache):
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        layer.batch_size = rows.numel()


@functools.cache
def _cache_argument(model_class: Any) -> str:
    """The forward's name for the cache: `past_key_values`, or `cache` where transformers renamed it."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _last_logits(model: Any, cache: Any, **kwargs: Any) -> torch.Tensor:
    kwargs[_cache_argument(model.__class__)] = cache
    logits: torch.Tensor = model(**kwargs, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1]


def _sliding(cache: Any) -> bool:
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)


@torch.inference_mode()
def generate_greedy(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    *,
    pad_token_id: int,
    tokenizer: Any = None,
    stop_strings: Sequence[str] = (),
    compact: Callable[[int, int, int], bool] = compact_worth_it,
    share_prefix: bool = True,
    groups: torch.Tensor | None = None,
    on_rows: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Greedy continuation of left-padded prompts: [batch, n] new tokens, padded with `pad_token_id`
    after each row's end, as `model.generate(do_sample=False)` returns them.

    `groups` ([batch], ascending): rows of different groups answer through different weights (a
    population batch), so a shared prefix is run once per group, not once; `on_rows` is told the group
    of each row of every forward before it runs."""
    from transformers.cache_utils import StaticCache

    device = input_ids.device
    B, T = input_ids.shape
    if max_new_tokens <= 0 or B == 0:
        return input_ids.new_empty((B, 0))
    if groups is None:
        groups = torch.zeros(B, dtype=torch.long, device=device)
    tell = on_rows or (lambda g: None)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.to(torch.bool)
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    stops = Stops(model, tokenizer, stop_strings, device)

    lengths = valid.sum(1)
    longest = int(lengths.max())
    max_len = longest + max_new_tokens - 1  # the last new token is never fed back
    cache = StaticCache(config=model.config, max_cache_len=max(max_len, longest))
    # a sliding-window layer's cache is a ring the prefix's rows cannot simply be copied into
    P = shared_prefix(input_ids, valid) if share_prefix and not _sliding(cache) else 0
    if P < MIN_SHARED_PREFIX:
        P = 0
    S = longest - P  # width of the rows' own parts, left-padded
    W = P + S

    own_ok = torch.arange(S, device=device)[None, :] >= (S - (lengths - P))[:, None]  # [B, S]
    own_ids = input_ids[:, T - S :].masked_fill(~own_ok, pad_token_id)
    own_pos = (P + own_ok.long().cumsum(1) - 1).masked_fill(~own_ok, 1)  # as generate computes them
    key_ok = torch.ones((B, max(max_len, W)), dtype=torch.long, device=device)
    key_ok[:, P:W] = own_ok.long()

    if P:
        # one row per group runs the prefix; every row then takes its group's cache rows
        leaders, source = group_leaders(groups)
        start = T - int(lengths[0])
        positions = torch.arange(P, device=device)
        tell(groups[leaders])
        _last_logits(
            model,
            cache,
            input_ids=input_ids[leaders, start : start + P],
            position_ids=positions[None].expand(leaders.numel(), P),
            cache_position=positions,
        )
        _keep_rows(cache, source)
    tell(groups)
    logits = _last_logits(
        model,
        cache,
        input_ids=own_ids,
        attention_mask=key_ok[:, :W],
        position_ids=own_pos,
        cache_position=torch.arange(P, W, device=device),
    )
    tok = logits.argmax(-1)

    last_pos = own_pos[:, -1].clone()

    def step(tok: torch.Tensor, s: int) -> torch.Tensor:
        c = W + s  # cache column of this step's token
        return _last_logits(
            model,
            cache,
            input_ids=tok[:, None],
            attention_mask=key_ok[:, : c + 1],
            position_ids=(last_pos + (s + 1))[:, None],
            cache_position=torch.tensor([c], device=device),
        ).argmax(-1)

    def keep(rows: torch.Tensor) -> None:
        nonlocal key_ok, last_pos
        key_ok, last_pos = key_ok[rows], last_pos[rows]
        _keep_rows(cache, rows)

    return decode_steps(tok, input_ids, max_new_tokens, pad_token_id, stops, compact, groups, tell, step, keep)
