"""Where a decode step's time goes (issue 31): the fast decoder on the embedded model, a batch of prompts
with `--new-tokens` greedy tokens each, under torch's profiler; the self CPU time of its operators, grouped
(matrix multiplies, attention, elementwise, copies and indexing, the rest), for the prefill-less part: the
profile of (prefill + N tokens) minus that of (prefill + 1 token), as BENCHMARKS.md's "step" is.

    .venv/bin/python scripts/profile_decode.py --batch 32 --new-tokens 32
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from thickets.bench.decode import _prompts
from thickets.engines import fast_decode, load_engine

GROUPS = {
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::softmax", "aten::_softmax"),
    "elementwise": (
        "aten::mul",
        "aten::add",
        "aten::silu",
        "aten::rsqrt",
        "aten::pow",
        "aten::mean",
        "aten::neg",
        "aten::cat",
        "aten::sub",
        "aten::div",
    ),
    "copies and indexing": (
        "aten::copy_",
        "aten::index",
        "aten::slice",
        "aten::select",
        "aten::view",
        "aten::to",
        "aten::transpose",
        "aten::reshape",
        "aten::expand",
        "aten::clone",
        "aten::contiguous",
        "aten::embedding",
        "aten::argmax",
        "aten::empty",
        "aten::fill_",
        "aten::unsqueeze",
    ),
}


def _group(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "the rest"


def _profile(model, enc, n: int, pad: int) -> tuple[dict[str, float], dict[str, float]]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fast_decode.generate_greedy(model, enc["input_ids"], enc["attention_mask"], n, pad_token_id=pad)
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        by_group[_group(e.key)] += e.self_cpu_time_total / 1e6
        by_op[e.key] += e.self_cpu_time_total / 1e6
    return by_group, by_op


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    engine, _ = load_engine("smollm2-135m", batch_size=args.batch)
    tok, model = engine.tokenizer, engine.model
    enc = tok(_prompts(tok, args.batch), return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tok.pad_token_id
    _profile(model, enc, 2, pad)  # warm-up
    one_g, one_o = _profile(model, enc, 1, pad)
    many_g, many_o = _profile(model, enc, args.new_tokens, pad)
    steps = args.new_tokens - 1
    total = sum(many_g.values()) - sum(one_g.values())
    print(f"decode steps: {steps} at batch {args.batch}; operator self time {total / steps * 1e3:.1f} ms a step")
    for group in [*GROUPS, "the rest"]:
        t = many_g.get(group, 0.0) - one_g.get(group, 0.0)
        print(f"  {group:22s} {t / steps * 1e3:7.2f} ms a step  {t / total:6.1%}")
    top = sorted(((many_o[k] - one_o.get(k, 0.0), k) for k in many_o), reverse=True)[:12]
    print("the top operators:")
    for t, k in top:
        print(f"  {k:40s} {t / steps * 1e3:7.2f} ms a step  {t / total:6.1%}  ({_group(k)})")
    with torch.inference_mode():
        print(f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
