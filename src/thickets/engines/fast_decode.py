"""Fast greedy decoding for Llama-family and Qwen2 causal LMs, reading the model's live weights.

Hugging Face `generate` spends much of a CPU decode step outside the matrix products: a
dynamic cache that grows by concatenation (every layer copies its whole K and V each step),
masks and position embeddings rebuilt per step, logits processors and stopping criteria run
through generic machinery. This module is one small forward pass in plain torch:

- embedding, RMSNorm, RoPE (a cos/sin table built once per call), GQA attention through
  `scaled_dot_product_attention` (for one query token the query heads are packed per
  key/value head, as transformers does), SwiGLU MLP, tied or untied output head, Qwen2's
  q/k/v biases (any `nn.Linear` bias is applied);
- a preallocated static KV cache `[layers, batch, kv_heads, max_len, head_dim]`; left-padded
  prompts with position ids as transformers computes them (cumsum of the mask - 1) and the
  padded keys masked; prefill in one forward, then one token per step with argmax;
- rows that end (an EOS id of the generation config, or a stop string, detected by
  transformers' own `StopStringCriteria` so the stopping step is the same) leave the batch:
  the cache, tokens and masks are compacted with `index_select` when enough rows are done.

Every weight is read from the model's own parameters at call time (no copies), so a
perturbation applied in place between calls is seen. Numerically this follows the
transformers float32 path operation by operation (the same RMSNorm, RoPE and SDPA calls), so
greedy tokens match `model.generate(do_sample=False)`; only the reduction order inside a
kernel may differ (a static cache and a compacted batch give other blockings), which changes
the last bits of a logit and could flip a near-tie.

`supports(model)` says whether a model can take this path; callers fall back to `generate`.

With `compiled=True` a decode step's layer blocks (norms, projections, RoPE, the MLP) run through
`torch.compile` (inductor): the same operations, fused where inductor can, so the tokens are those of
the eager step unless a fused reduction moves a near-tie. On this project's 2-core CPU it is no faster
(the step is matrix-multiply bound; BENCHMARKS.md), so it is off unless asked for.
"""

from __future__ import annotations

import functools
import os
import shutil
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from thickets.engines.greedy import (
    MIN_SHARED_PREFIX,
    Stops,
    compact_worth_it,
    decode_steps,
    group_leaders,
    shared_prefix,
)
from thickets.models import cache_root

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inv_freq fixed; no per-length update


def supports(model: Any) -> bool:
    """True when `generate_greedy` reproduces greedy `generate` under a neutral generation config (no
    repetition penalty or other logits processors, whatever the model ships; see
    `transformers_engine.neutral_generation_config`), else use `generate`."""
    if type(model).__name__ not in SUPPORTED_ARCHITECTURES or getattr(model, "training", False):
        return False
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return False  # sliding-window layers
    rope = getattr(model.model, "rotary_emb", None)
    if rope is None or getattr(rope, "rope_type", None) not in _STATIC_ROPE_TYPES:
        return False
    if getattr(model.model, "embed_tokens", None) is None or not hasattr(model, "lm_head"):
        return False
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    return all(hasattr(attn, n) for n in needed) and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))


@dataclass
class _Layer:
    ln1: torch.Tensor
    eps1: float
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    ln2: torch.Tensor
    eps2: float
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear


def _layers(model: Any) -> list[_Layer]:
    out: list[_Layer] = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        out.append(
            _Layer(
                layer.input_layernorm.weight,
                layer.input_layernorm.variance_epsilon,
                a.q_proj,
                a.k_proj,
                a.v_proj,
                a.o_proj,
                layer.post_attention_layernorm.weight,
                layer.post_attention_layernorm.variance_epsilon,
                m.gate_proj,
                m.up_proj,
                m.down_proj,
            )
        )
    return out


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm / Qwen2RMSNorm, operation for operation."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _linear(x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    """The module itself, not F.linear on its weight: the same arithmetic, and forward hooks (a
    population batch's low-rank products) see the call."""
    out: torch.Tensor = lin(x)
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (_rotate_half(x) * sin)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    group: int,
    mask: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """SDPA called as transformers calls it for the same case, so the arithmetic is the same.

    No mask -> GQA inside SDPA (causal for a prompt); a mask and one query token -> the query heads
    of each key/value head packed as its queries; a mask and several tokens -> key/value heads repeated.
    """
    n, _, t, hd = q.shape
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=causal, enable_gqa=group > 1)
    if t == 1:
        n_kv = k.shape[1]
        a = F.scaled_dot_product_attention(q.reshape(n, n_kv, group, hd), k, v, attn_mask=mask, scale=scaling)
        return a.reshape(n, n_kv * group, 1, hd)
    if group > 1:
        s, n_kv = k.shape[2], k.shape[1]
        k = k[:, :, None].expand(n, n_kv, group, s, hd).reshape(n, n_kv * group, s, hd)
        v = v[:, :, None].expand(n, n_kv, group, s, hd).reshape(n, n_kv * group, s, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)


def _block_in(
    x: torch.Tensor,
    ln: torch.Tensor,
    eps: float,
    q_proj: torch.nn.Linear,
    k_proj: torch.nn.Linear,
    v_proj: torch.nn.Linear,
    cos: torch.Tensor,
    sin: torch.Tensor,
    nh: int,
    nkv: int,
    hd: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer up to attention: its norm, q/k/v [n, heads, t, hd], RoPE on q and k."""
    n, t = x.shape[:2]
    h = _rms_norm(x, ln, eps)
    q = _linear(h, q_proj).view(n, t, nh, hd).transpose(1, 2)
    k = _linear(h, k_proj).view(n, t, nkv, hd).transpose(1, 2)
    v = _linear(h, v_proj).view(n, t, nkv, hd).transpose(1, 2)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def _block_out(
    x: torch.Tensor,
    a: torch.Tensor,
    o_proj: torch.nn.Linear,
    ln: torch.Tensor,
    eps: float,
    gate: torch.nn.Linear,
    up: torch.nn.Linear,
    down: torch.nn.Linear,
) -> torch.Tensor:
    """A layer after attention: the output projection and residual, the norm, the SwiGLU MLP and residual."""
    n, heads, t, hd = a.shape
    x = x + _linear(a.transpose(1, 2).reshape(n, t, heads * hd), o_proj)
    h = _rms_norm(x, ln, eps)
    return x + _linear(F.silu(_linear(h, gate)) * _linear(h, up), down)


_EAGER_ROUNDING: dict[str, str | int | bool | Callable[..., Any]] = {"emulate_precision_casts": True}


def has_cxx_compiler() -> bool:
    """Whether torch's inductor can build CPU kernels here: one of the compilers it tries (its
    `cpp.cxx`: CXX, else g++, as set when torch started) is on the PATH, and Python's headers, which its
    kernels include, are installed."""
    from torch._inductor import config

    found = any(c and shutil.which(c) for c in config.cpp.cxx)
    return bool(found) and Path(sysconfig.get_paths()["include"], "Python.h").is_file()


#: the torch release the compiled step was built and tested with (inductor's options and module inlining)
COMPILE_TORCH = (2, 13)


def compile_refusal(device: str) -> str | None:
    """Why a compiled decode step cannot run here (one line), or None."""
    release = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if release < COMPILE_TORCH:
        return f"--compile needs torch {'.'.join(map(str, COMPILE_TORCH))} or later; this is torch {torch.__version__}"
    if device == "cpu" and not has_cxx_compiler():
        return "--compile on a CPU needs a C++ compiler for torch's inductor (g++, or set CXX) and Python's headers"
    return None


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile with inductor's on-disk cache of compiled kernels in thickets' cache (not torch's default
    under /tmp, which a reboot empties), unless the user chose its place: a later process compiles warm.
    torch writes its default into TORCHINDUCTOR_CACHE_DIR when loading a model, so only that value is
    taken for unchosen."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
    return torch.compile(fn, dynamic=None, options=_EAGER_ROUNDING)


@functools.cache
def _compiled_block_in() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`_block_in` through torch.compile, made on first use: one compiled graph serves every layer (the
    modules are its inputs, not constants) and every batch size after the second (automatic dynamic
    shapes; batch 1 gets its own), so a search compiles it a few times; the cache writes and attention
    around it stay eager. Half-precision values are rounded where the eager step rounds them (inductor
    would otherwise keep a fused chain in float32); the float32 reductions it fuses (RMSNorm's mean) may
    sum in another order, so a logit's last bits can move and a near-tie flip."""
    return _compile(_block_in)


@functools.cache
def _compiled_block_out() -> Callable[..., torch.Tensor]:
    """`_block_out` through torch.compile; see `_compiled_block_in`."""
    return _compile(_block_out)


class _Decoder:
    """The model's layers over a preallocated cache [layers, batch, kv_heads, max_len, head_dim]."""

    def __init__(self, model: Any, batch: int, max_len: int, device: torch.device, compiled: bool = False):
        inner = model.model
        #: decode steps (one token a row) through the compiled blocks
        self.compiled = compiled
        self.layers = _layers(model)
        self.embed_tokens = inner.embed_tokens
        self.embed = inner.embed_tokens.weight
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = model.lm_head
        attn0 = inner.layers[0].self_attn
        self.hd, self.scaling = attn0.head_dim, attn0.scaling
        self.n_heads = attn0.q_proj.out_features // self.hd
        self.n_kv = attn0.k_proj.out_features // self.hd
        self.group = self.n_heads // self.n_kv
        self.rotary = inner.rotary_emb
        shape = (len(self.layers), batch, self.n_kv, max_len, self.hd)
        self.k = torch.empty(shape, dtype=self.embed.dtype, device=device)
        self.v = torch.empty_like(self.k)

    def rope_table(self, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..n_pos-1, built once per call with the model's own rotary module."""
        table = torch.arange(n_pos, device=self.embed.device)[None, :]
        cos, sin = self.rotary(self.embed[:1].unsqueeze(0), table)
        return cos[0], sin[0]

    def forward(
        self,
        ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        lo: int,
        mask: torch.Tensor | None,
        causal: bool = False,
        rows: int | None = None,
    ) -> torch.Tensor:
        """Feed ids [n, t] at cache columns lo..lo+t, attending to columns 0..lo+t; the last position's
        logits [n, vocab]. `rows`: write the new keys to this many cache rows (a shared prefix computed
        once for the whole batch)."""
        n, t = ids.shape
        hi = lo + t
        hd, nh, nkv = self.hd, self.n_heads, self.n_kv
        compiled = self.compiled and t == 1  # decode steps; a prompt's varying width would recompile
        into, out = (_compiled_block_in(), _compiled_block_out()) if compiled else (_block_in, _block_out)
        x = self.embed_tokens(ids)
        for i, L in enumerate(self.layers):
            q, k, v = into(x, L.ln1, L.eps1, L.q, L.k, L.v, cos, sin, nh, nkv, hd)
            ck, cv = self.k[i, : rows or n], self.v[i, : rows or n]
            ck[:, :, lo:hi] = k
            cv[:, :, lo:hi] = v
            if causal:  # a prompt on an empty cache: attend to the new keys only, as transformers does
                a = _attend(q, k, v, self.scaling, self.group, None, True)
            else:
                a = _attend(q, ck[:n, :, :hi], cv[:n, :, :hi], self.scaling, self.group, mask, False)
            x = out(x, a, L.o, L.ln2, L.eps2, L.gate, L.up, L.down)
        x = _rms_norm(x[:, -1], self.norm, self.norm_eps)
        return _linear(x, self.head)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these cache rows (ascending), moved down in place one layer at a time, so the
        cache is never copied whole."""
        n = rows.numel()
        for cache in (self.k, self.v):
            for i in range(cache.shape[0]):
                cache[i, :n] = cache[i].index_select(0, rows)
        self.k, self.v = self.k[:, :n], self.v[:, :n]


def _hooked(model: Any) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


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
    compiled: bool = False,
) -> torch.Tensor:
    """Greedy continuation of left-padded prompts: a [batch, n] tensor of new tokens, padded with
    `pad_token_id` after each row's end, exactly as `model.generate(do_sample=False)` returns them
    (n = the step at which the last row ended, at most max_new_tokens).

    A prefix all prompts share is run once, not once per row: its keys and values do not depend
    on what follows. The rows' own tokens then sit after it, left-padded, with the positions
    transformers would give them; padded keys are masked.

    `groups` ([batch], ascending): rows of different groups answer through different weights (a
    population batch), so a shared prefix is run once per group; `on_rows` is told the group of each
    row of every forward before it runs.

    `compiled`: decode steps through the torch.compile'd layer blocks, unless a module of the model carries
    forward hooks (a population batch's low-rank products: their per-forward row bookkeeping would force a
    recompile on every change), which run eagerly.
    """
    device = input_ids.device
    B, T = input_ids.shape
    if max_new_tokens <= 0 or B == 0:
        return input_ids.new_empty((B, 0))
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.to(torch.bool)
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    stops = Stops(model, tokenizer, stop_strings, device)
    if groups is None:
        groups = torch.zeros(B, dtype=torch.long, device=device)
    tell = on_rows or (lambda g: None)

    P = shared_prefix(input_ids, valid) if share_prefix else 0
    if P < MIN_SHARED_PREFIX:
        P = 0
    lengths = valid.sum(1)
    S = int(lengths.max()) - P  # width of the rows' own parts, left-padded
    W = P + S  # prompt columns in the cache
    max_len = W + max_new_tokens - 1  # the last new token is never fed back
    dec = _Decoder(model, B, max_len, device, compiled and not _hooked(model))
    cos_t, sin_t = dec.rope_table(W + max_new_tokens + 1)

    # the rows' own tokens, right-aligned in S columns; positions as transformers computes them
    own_ok = torch.arange(S, device=device)[None, :] >= (S - (lengths - P))[:, None]  # [B, S]
    own_ids = input_ids[:, T - S :].masked_fill(~own_ok, pad_token_id) if S <= T else None
    own_pos = (P + own_ok.long().cumsum(1) - 1).masked_fill(~own_ok, 0)
    key_ok = torch.ones((B, max_len), dtype=torch.bool, device=device)
    key_ok[:, P:W] = own_ok
    padded = not bool(own_ok.all())

    # -- prefill -------------------------------------------------------------------------------
    if P:  # one row per group runs the prefix; every row then takes its group's keys and values
        leaders, source = group_leaders(groups)
        start = T - int(lengths[0])
        pcos, psin = cos_t[:P][None, None], sin_t[:P][None, None]
        tell(groups[leaders])
        dec.forward(input_ids[leaders, start : start + P], pcos, psin, 0, None, causal=True, rows=leaders.numel())
        dec.k[:, :, :, :P] = dec.k[:, source, :, :P]
        dec.v[:, :, :, :P] = dec.v[:, source, :, :P]
    tell(groups)
    cos, sin = cos_t[own_pos].unsqueeze(1), sin_t[own_pos].unsqueeze(1)  # [B, 1, S, hd]
    assert own_ids is not None  # S <= T: the rows' own parts are within the prompt columns
    if not P and not padded:
        logits = dec.forward(own_ids, cos, sin, 0, None, causal=True)
    else:
        causal = torch.ones((S, S), dtype=torch.bool, device=device).tril_()
        mask = causal[None] & own_ok[:, None, :]
        mask |= torch.eye(S, dtype=torch.bool, device=device)  # padded queries see themselves: no NaN rows
        if P:
            mask = torch.cat([torch.ones((B, S, P), dtype=torch.bool, device=device), mask], 2)
        logits = dec.forward(own_ids, cos, sin, P, mask[:, None])
    tok = logits.argmax(-1)  # [B]

    # -- decode --------------------------------------------------------------------------------
    last_pos = own_pos[:, -1].clone()

    def step(tok: torch.Tensor, s: int) -> torch.Tensor:
        c = W + s  # cache column of this step's token
        p = last_pos + (s + 1)
        cos, sin = cos_t[p][:, None, None], sin_t[p][:, None, None]  # [n, 1, 1, hd]
        step_mask = key_ok[:, None, None, : c + 1] if padded else None
        return dec.forward(tok[:, None], cos, sin, c, step_mask).argmax(-1)

    def keep(rows: torch.Tensor) -> None:
        nonlocal key_ok, last_pos
        key_ok, last_pos = key_ok[rows], last_pos[rows]
        dec.keep(rows)

    return decode_steps(tok, input_ids, max_new_tokens, pad_token_id, stops, compact, groups, tell, step, keep)
