"""Decode speed: our greedy path against transformers' `generate`, and against the machine's limit.

The limit is measured, not looked up: every weight matrix of the model multiplied, in the
order a decode step uses them, by a float32 activation of the step's shape ([batch, in]).
That is the matrix-multiply work one decode step cannot avoid, with the weights streamed from
memory as they are in a real step (timing one small matrix again and again would keep it in
cache and overstate the limit). Tokens/s at the limit = FLOP/s / (2 x parameters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from thickets.engines import fast_decode, hf_decode, render_prompt
from thickets.engines.transformers_engine import hf_generate_greedy
from thickets.progress import bar

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine

PROMPTS = [
    "What is 12 times 7?",
    "Name three colors and say which one you like most.",
    "Write one sentence about the sea.",
    "Explain in a few words why the sky is blue.",
    "2+2=",
    "List the first five prime numbers.",
    "Translate 'good morning' into French.",
    "What is the capital of Italy? Answer briefly, then tell me something about it.",
]


def _linears(model: Any) -> list[torch.Tensor]:
    """The weight of every matrix product in a forward pass, in the order the pass uses them."""
    ws: list[torch.Tensor] = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        ws += [
            a.q_proj.weight,
            a.k_proj.weight,
            a.v_proj.weight,
            a.o_proj.weight,
            m.gate_proj.weight,
            m.up_proj.weight,
            m.down_proj.weight,
        ]
    ws.append(model.lm_head.weight)
    return ws


@torch.inference_mode()
def matmul_limit(model: Any, batch: int, repeats: int = 5) -> dict[str, float]:
    """Measured float32 FLOP/s of a decode step's matrix products at `batch` rows (best of `repeats`)."""
    ws = _linears(model)
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype) for w in ws}
    flops = 2 * batch * sum(w.numel() for w in ws)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w in ws:
            F.linear(xs[w.shape[1]], w)
        best = min(best, time.perf_counter() - t)
    return {"flops_per_s": flops / best, "step_s": best}


def _prompts(tok: Any, batch: int) -> list[str]:

    return [render_prompt(tok, PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))) for i in range(batch)]


def _hf(tok: Any, model: Any, enc: Any, n: int, pad: int) -> torch.Tensor:
    out: torch.Tensor = hf_generate_greedy(model, tok, enc, n)
    return out


def _loop(model: Any, enc: Any, n: int, pad: int) -> torch.Tensor:
    return hf_decode.generate_greedy(model, enc["input_ids"], enc["attention_mask"], n, pad_token_id=pad)


def _ours(model: Any, enc: Any, n: int, pad: int, compiled: bool = False) -> torch.Tensor:
    return fast_decode.generate_greedy(
        model, enc["input_ids"], enc["attention_mask"], n, pad_token_id=pad, compiled=compiled
    )


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def measure(
    engine: TransformersEngine,
    batch_sizes: Sequence[int] = (1, 8, 32),
    new_tokens: int = 32,
    repeats: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokens/s of the four greedy paths at each batch size (the hand-written decoder "ours", eager and
    "compiled", our loop over transformers' forward "loop", and `generate` "hf"), timed interleaved (best
    of `repeats`), with the end-of-sequence id switched off so every row makes `new_tokens` tokens.

    Two figures per path: generation (prompt in, `new_tokens` out, what a search pays) and the
    decode step alone (the time of n tokens less the time of 1, which is the prefill). Keys:
    decode_vs_hf_b{B} (generation tokens/s ratio), roofline_fraction_b{B} (decode-step tokens/s
    over the matrix-multiply limit), compiled_vs_eager_step_b{B} and compile_s_b{B}.
    """
    model, tok = engine.model, engine.tokenizer
    if not fast_decode.supports(model):
        raise ValueError(f"{type(model).__name__} has no fast decode path to measure")
    n_params = sum(p.numel() for p in engine.params.values())
    pad = tok.pad_token_id
    tok.padding_side = "left"
    res: dict[str, Any] = {"decode": {}}
    compiles = fast_decode.has_cxx_compiler()  # the compiled step's figures need inductor's C++ compiler
    gen = model.generation_config
    saved_eos, gen.eos_token_id = gen.eos_token_id, None
    try:
        with bar("bench: decode", len(batch_sizes) * repeats, progress) as update:
            for b in batch_sizes:
                enc = tok(_prompts(tok, b), return_tensors="pt", padding=True, add_special_tokens=False)
                paths: dict[str, Callable[..., torch.Tensor]] = {"ours": _ours, "loop": _loop, "hf": partial(_hf, tok)}
                if compiles:
                    paths["compiled"] = partial(_ours, compiled=True)
                best = {(p, n): float("inf") for p in paths for n in (1, new_tokens)}
                warm = {p: _timed(partial(fn, model, enc, 3, pad))[0] for p, fn in paths.items()}
                if compiles:  # the first compiled call's extra time: compiling (two steps, so a second shape
                    # too) less what the eager call of the same work took; inductor's kernel cache can make it warm
                    res[f"compile_s_b{b}"] = warm["compiled"] - warm["ours"]
                for _ in range(repeats):
                    for name, fn in paths.items():
                        for n in (new_tokens, 1):
                            t, _ = _timed(partial(fn, model, enc, n, pad))
                            best[name, n] = min(best[name, n], t)
                    update()
                full = {p: b * new_tokens / best[p, new_tokens] for p in paths}
                step = {p: b * (new_tokens - 1) / max(best[p, new_tokens] - best[p, 1], 1e-9) for p in paths}
                limit = matmul_limit(model, b)
                limit_tok_s = limit["flops_per_s"] / (2 * n_params)
                a = _ours(model, enc, new_tokens, pad)
                h = hf_generate_greedy(model, tok, enc, new_tokens)
                g = _loop(model, enc, new_tokens, pad)
                res["decode"][b] = {
                    "prompt_tokens": int(enc["attention_mask"].sum()),
                    "new_tokens": b * new_tokens,
                    "same_tokens": bool(a.shape == h.shape and torch.equal(a, h)),
                    "loop_same_tokens": bool(g.shape == h.shape and torch.equal(g, h)),
                    "loop_tok_s": full["loop"],
                    "loop_step_tok_s": step["loop"],
                    "ours_tok_s": full["ours"],
                    "hf_tok_s": full["hf"],
                    "ours_step_tok_s": step["ours"],
                    "hf_step_tok_s": step["hf"],
                    "ours_prefill_s": best["ours", 1],
                    "hf_prefill_s": best["hf", 1],
                    "matmul_gflop_s": limit["flops_per_s"] / 1e9,
                    "limit_tok_s": limit_tok_s,
                }
                res[f"decode_vs_hf_b{b}"] = full["ours"] / full["hf"]
                res[f"loop_vs_hf_b{b}"] = full["loop"] / full["hf"]
                res[f"handwritten_vs_loop_b{b}"] = full["ours"] / full["loop"]
                res[f"decode_step_vs_hf_b{b}"] = step["ours"] / step["hf"]
                res[f"roofline_fraction_b{b}"] = step["ours"] / limit_tok_s
                if compiles:
                    c = _ours(model, enc, new_tokens, pad, compiled=True)
                    res["decode"][b] |= {
                        "compiled_same_tokens": bool(c.shape == a.shape and torch.equal(c, a)),
                        "compiled_tok_s": full["compiled"],
                        "compiled_step_tok_s": step["compiled"],
                    }
                    res[f"compiled_vs_eager_step_b{b}"] = step["compiled"] / step["ours"]
                    res[f"compiled_roofline_fraction_b{b}"] = step["compiled"] / limit_tok_s
                res[f"hf_roofline_fraction_b{b}"] = step["hf"] / limit_tok_s
    finally:
        gen.eos_token_id = saved_eos
    return res
