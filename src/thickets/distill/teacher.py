"""The experts' next-token probabilities on the kept traces: what distillation from probabilities (`--loss
kd-fkl|kd-rkl|kd-jsd`) trains the student towards, instead of the traces' tokens alone.

Each expert of the round reads every kept trace on whose question it agrees (its own answer there has the
trace's vote key in vote mode, or is correct in gold mode), teacher-forced: prompt, then the trace's
tokens, as the student is trained on them. At each of the trace's tokens its `top` most likely next tokens
and their probabilities are kept, one file per expert (`teacher-K.safetensors`, written whole), so a round
killed here goes on from the last expert that finished. A trace's teacher is the mean of its agreeing
experts' distributions (a token outside an expert's top counts as 0 for it), cut to the `top` most likely
and renormalised; a trace no expert of the round agrees with (kept in an earlier round) is taught its own
tokens (a one-hot teacher: the cross-entropy of `--loss ce`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thickets.disk import write_whole
from thickets.distill.traces import Trace
from thickets.engines import prompt_token_ids

if TYPE_CHECKING:
    import torch


def trace_tokens(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], add_special: bool
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of rendered prompts and traces, the completion ending with the
    end-of-sequence token (the student learns to stop where the expert did): the teacher's and the
    student's tokens are these same ids."""
    prompt_ids = prompt_token_ids(tokenizer, prompts, add_special)
    eos = tokenizer.eos_token or ""
    completion_ids = tokenizer([c + eos for c in completions], add_special_tokens=False).input_ids
    return [(list(p), list(c)) for p, c in zip(prompt_ids, completion_ids)]


def agreeing(kept: Sequence[Trace], traces: Sequence[Trace], mode: str) -> list[list[int]]:
    """For each kept trace, the expert ranks whose own answers on its question agree with it."""
    by_expert: dict[tuple[int, str], list[Trace]] = {}
    for t in traces:
        by_expert.setdefault((t.expert_rank, t.example_id), []).append(t)
    ranks = sorted({t.expert_rank for t in traces})
    out = []
    for k in kept:
        agree = []
        for r in ranks:
            own = by_expert.get((r, k.example_id), [])
            if mode == "gold":
                agrees = any(t.score.correct for t in own)
            else:
                agrees = k.score.vote_key is not None and any(t.score.vote_key == k.score.vote_key for t in own)
            if agrees:
                agree.append(r)
        out.append(agree)
    return out


def expert_top(
    model: Any, rows: Sequence[tuple[list[int], list[int]]], top: int, pad_id: int, batch_size: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, the model's `top` next-token ids and probabilities (float32) at each completion token
    (predicting it from what came before), teacher-forced, rows right-padded in batches."""
    import torch

    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            for at in completion_logits(model, rows[lo : lo + batch_size], pad_id):
                probs, idx = torch.softmax(at.float(), dim=-1).topk(min(top, at.shape[-1]), dim=-1)
                out.append((idx.to(torch.int32).cpu(), probs.cpu()))
    return out


def completion_logits(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> list[torch.Tensor]:
    """One forward of (prompt ids, completion ids) rows, right-padded and masked, on the model's device: per
    row, the logits [len(completion), vocab] at the positions that predict its completion tokens (position
    t predicts token t + 1), what the teacher is read at and the student trained at."""
    import torch

    device = next(model.parameters()).device
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    return [logits[i, len(p) - 1 : len(p) + len(c) - 1] for i, (p, c) in enumerate(rows)]


def pad_id(tokenizer: Any) -> int:
    """The id right padding takes (masked, and never read at a completion position)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0)


def write_expert(
    path: Path, keys: Sequence[tuple[str, str]], tops: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """One expert's top tokens on the traces it agrees with, keyed by (question, trace text), written whole."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for j, (ids, probs) in enumerate(tops):
        tensors[f"{j}.ids"], tensors[f"{j}.probs"] = ids.contiguous(), probs.contiguous()
    write_whole(path, save(tensors, metadata={"keys": json.dumps([list(k) for k in keys])}))


def read_expert(path: Path) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = [tuple(k) for k in json.loads((f.metadata() or {})["keys"])]
        return {k: (f.get_tensor(f"{j}.ids"), f.get_tensor(f"{j}.probs")) for j, k in enumerate(keys)}


def combine(
    completion_ids: list[int], experts: Sequence[tuple[torch.Tensor, torch.Tensor]], top: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace's teacher [L, top] ids and probabilities: the mean of its agreeing experts' distributions cut
    to the `top` most likely and renormalised, or its own tokens (one-hot) when none agrees."""
    import torch

    length = len(completion_ids)
    if not experts:
        ids = torch.zeros((length, top), dtype=torch.int32)
        ids[:, 0] = torch.tensor(completion_ids, dtype=torch.int32)
        probs = torch.zeros((length, top))
        probs[:, 0] = 1.0
        return ids, probs
    ids_all = torch.cat([i.long() for i, _ in experts], dim=1)  # [L, E top]
    probs_all = torch.cat([p for _, p in experts], dim=1) / len(experts)
    ids = torch.zeros((length, top), dtype=torch.long)
    probs = torch.zeros((length, top))
    for t in range(length):  # each position's tokens summed over the experts (at most E x top of them)
        uniq, inverse = torch.unique(ids_all[t], return_inverse=True)
        summed = torch.zeros(len(uniq)).scatter_add_(0, inverse, probs_all[t])
        best, where = summed.topk(min(top, len(uniq)))
        ids[t, : len(best)], probs[t, : len(best)] = uniq[where], best / best.sum()
    return ids.to(torch.int32), probs


def kd_loss(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_probs: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean over tokens [N] of the student's divergence from the teacher, logits [N, V] and the teacher
    [N, top]. kd-fkl: KL(teacher || student), the student over its whole vocabulary (mass outside the
    teacher's tokens costs); kd-rkl: KL(student || teacher) and kd-jsd: the Jensen-Shannon divergence (beta
    1/2), both with the student renormalised over the teacher's tokens (where the teacher, cut to its top,
    is 0 a reverse KL would be infinite); a position whose teacher is one token takes the forward KL (the
    cross-entropy), since over one token any student has no divergence."""
    import torch

    if loss not in ("kd-fkl", "kd-rkl", "kd-jsd"):
        raise ValueError(f"unknown loss {loss!r}")
    ids = teacher_ids.long()
    p = teacher_probs
    logp = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    forward = (p * (logp - torch.log_softmax(logits.float(), dim=-1).gather(1, ids))).sum(dim=1)
    if loss == "kd-fkl":
        return forward.mean()
    support = torch.where(p > 0, logits.float().gather(1, ids), torch.full_like(p, float("-inf")))
    logq = torch.log_softmax(support, dim=-1)
    q = logq.exp()
    safe_logq = torch.where(p > 0, logq, torch.zeros_like(logq))
    if loss == "kd-rkl":
        div = (q * (safe_logq - logp)).sum(dim=1)
    else:
        m = 0.5 * (p + q)
        logm = torch.where(m > 0, m.clamp_min(1e-30).log(), torch.zeros_like(m))
        div = 0.5 * (p * (logp - logm)).sum(dim=1) + 0.5 * (q * (safe_logq - logm)).sum(dim=1)
    # a one-token teacher (a trace no expert agrees with) leaves no divergence over its support to learn
    # from: it is taught its token by the forward KL, the cross-entropy
    single = (p > 0).sum(dim=1) == 1
    return torch.where(single, forward, div).mean()
