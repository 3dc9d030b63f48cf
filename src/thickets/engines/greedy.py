"""What both greedy decoders share: when a row ends (as `generate` decides), which prompt prefix all rows
share, when finished rows leave the batch, and the step loop that does the bookkeeping around a
decoder's forward pass (fast_decode's hand-written one, or transformers' own in hf_decode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers.generation.stopping_criteria import StopStringCriteria


def eos_ids(model: Any) -> list[int]:
    """The ids `generate` stops on: the generation config's `eos_token_id` (none when it is unset)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# (id(tokenizer), len(tokenizer), stop strings) -> (tokenizer, StopStringCriteria)
_STOP_CRITERIA: dict[tuple[int, int, tuple[str, ...]], tuple[Any, StopStringCriteria]] = {}


def _stop_string_criteria(tokenizer: Any, stop_strings: tuple[str, ...]) -> StopStringCriteria:
    """transformers' StopStringCriteria, built once per tokenizer and stop strings (building scans the
    whole vocabulary: about 0.3 s, and transformers' own cache misses because its key is the vocabulary
    in hash order)."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    key = (id(tokenizer), len(tokenizer), stop_strings)
    hit = _STOP_CRITERIA.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    criteria = StopStringCriteria(tokenizer, list(stop_strings))
    if len(_STOP_CRITERIA) >= 8:
        _STOP_CRITERIA.pop(next(iter(_STOP_CRITERIA)))
    _STOP_CRITERIA[key] = (tokenizer, criteria)  # the tokenizer is held so its id is not reused
    return criteria


class Stops:
    """EOS ids and stop strings; a row is done after the token that ends it (as `generate` decides)."""

    def __init__(self, model: Any, tokenizer: Any, stop_strings: Sequence[str], device: torch.device):
        ids = eos_ids(model)
        self.eos = torch.tensor(ids, device=device, dtype=torch.long) if ids else None
        self.strings: StopStringCriteria | None = None
        if stop_strings:
            self.strings = _stop_string_criteria(tokenizer, tuple(stop_strings))
            self.window = self.strings.maximum_token_len

    def __call__(self, last: torch.Tensor, seq: torch.Tensor) -> torch.Tensor | None:
        """last: [B] new tokens; seq: [B, L] all tokens so far (prompt + generated)."""
        done = None
        if self.eos is not None:
            done = torch.isin(last, self.eos)
        if self.strings is not None:
            hit = self.strings(seq[:, -self.window :], None)
            done = hit if done is None else done | hit
        return done


def compact_worth_it(n_done: int, n_active: int, steps_left: int) -> bool:
    """Drop finished rows when the compute they would still cost outweighs one cache copy.

    A row-step (about 2 x params FLOPs) costs far more than copying one row's cache once, so
    compaction pays off after a few steps; batching the finished rows avoids copying on every step.
    """
    if n_done == 0 or steps_left <= 0:
        return False
    return n_done * steps_left >= max(2, n_active // 8)


def shared_prefix(input_ids: torch.Tensor, valid: torch.Tensor) -> int:
    """Length of the token prefix every (left-padded) row starts with, leaving each row at least one
    token of its own: a chat template's system prompt is usually most of a short prompt."""
    lengths = valid.sum(1)
    shortest = int(lengths.min())
    if shortest < 2 or input_ids.shape[0] < 2:
        return 0
    T = input_ids.shape[1]
    starts = T - lengths  # left padding
    idx = starts[:, None] + torch.arange(shortest - 1, device=input_ids.device)[None, :]
    heads = input_ids.gather(1, idx)  # [B, shortest - 1] each row's first tokens
    same = (heads == heads[:1]).all(0)
    return int(same.long().cumprod(0).sum())


MIN_SHARED_PREFIX = 8  # below this, one prefill over the padded batch is as cheap


def group_leaders(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first row of each group, each row's group as an index into those leaders) for ascending groups:
    a population batch runs a shared prefix once per group (expert), then copies it to the group's rows."""
    first = torch.ones(groups.numel(), dtype=torch.bool, device=groups.device)
    first[1:] = groups[1:] != groups[:-1]
    return first.nonzero().squeeze(1), first.long().cumsum(0) - 1


def decode_steps(
    first: torch.Tensor,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    pad_token_id: int,
    stops: Stops,
    compact: Callable[[int, int, int], bool],
    groups: torch.Tensor,
    tell: Callable[[torch.Tensor], None],
    step: Callable[[torch.Tensor, int], torch.Tensor],
    keep: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """The greedy loop after the prompt: `first` [B] is the prompt's next token; `step(tok, s)` feeds the
    active rows' tokens of step s and returns their next ones; `keep(rows)` drops the caller's state
    of finished rows. Returns [B, n] new tokens, `pad_token_id` after each row's end."""
    device = first.device
    B, T = input_ids.shape
    tok = first
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    seq = torch.empty((B, T + max_new_tokens), dtype=torch.long, device=device)  # for stop strings
    seq[:, :T] = input_ids
    rows = torch.arange(B, device=device)  # active row -> original row
    pending = torch.zeros(B, dtype=torch.bool, device=device)
    n_pending, n, steps = 0, B, max_new_tokens
    for s in range(max_new_tokens):
        out[rows, s] = torch.where(pending, pad_token_id, tok) if n_pending else tok
        seq[:, T + s] = tok
        done = stops(tok, seq[:, : T + s + 1])
        if done is not None:
            done &= ~pending
            new = int(done.sum())
            if new:
                pending |= done
                n_pending += new
        if n_pending == n:
            steps = s + 1
            break
        if s == max_new_tokens - 1:
            break
        if n_pending and compact(n_pending, n - n_pending, max_new_tokens - 1 - s):
            kept = (~pending).nonzero().squeeze(1)
            rows, tok, seq = rows[kept], tok[kept], seq[kept]
            keep(kept)
            n = kept.numel()
            tell(groups[rows])
            pending = torch.zeros(n, dtype=torch.bool, device=device)
            n_pending = 0
        tok = step(tok, s)
    return out[:, :steps]
