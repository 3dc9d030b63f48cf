"""`thickets bench`: where the time goes, measured side by side in one process on the same prompts.

The machine is shared and noisy, so every target is a ratio of two things timed in the same
run: our search path against the loop peer implementations write (clone the weights, add
noise, call `generate`, copy back), our decoder against transformers' `generate`, and our
decoder against the machine's own matrix-multiply speed at the decode shapes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch

from thickets.bench import decode as bench_decode
from thickets.bench import population as bench_population
from thickets.bench.config import BenchConfig
from thickets.engines import load_engine, render_prompt
from thickets.engines.base import cut_at_stop
from thickets.engines.transformers_engine import hf_generate_greedy
from thickets.noise import TABLE_SIZE, PerturbationSpec, add_noise_
from thickets.progress import bar
from thickets.randopt.config import SearchConfig
from thickets.randopt.scoring import evaluate
from thickets.randopt.search import search
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


_FOOTPRINT = """
import time
t0 = time.perf_counter()
import torch, transformers.activations, transformers.core_model_loading  # what a first from_pretrained imports
from transformers import AutoModelForCausalLM, AutoTokenizer
import_s = time.perf_counter() - t0
from thickets.bench.runner import _footprint_child
_footprint_child({cfg!r}, {run_dir!r}, import_s)
"""


def _footprint_child(cfg: dict[str, Any], run_dir: str, import_s: float) -> None:
    """In a fresh process: the cached model to a ready engine (libraries imported), then a short
    search; peak memory with and above the interpreter and its libraries."""

    settings = BenchConfig(**cfg)
    config = SearchConfig(
        model=settings.model,
        task=settings.task,
        population=2,
        sigmas=(settings.sigma,),
        val_size=settings.val_size,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
    )
    baseline = _rss_gb()
    t = time.perf_counter()
    engine, _ = load_engine(settings.model, batch_size=settings.batch_size)
    load_s = time.perf_counter() - t
    loaded = _rss_gb()  # the weights are mapped, not yet read: the tokenizer and the model's objects
    search(config, run_dir, engine=engine, progress=False)
    print(
        json.dumps(
            {
                "warm_load_s": load_s,
                "import_s": import_s,
                "process_ready_s": import_s + load_s,
                "baseline_rss_gb": baseline,
                "loaded_rss_gb": loaded,
                "peak_rss_gb": peak_rss_gb(),
            }
        )
    )


def search_footprint(cfg: BenchConfig) -> dict[str, Any]:
    """Load time and memory of a search in a fresh process, undisturbed by the bench's own work."""

    with tempfile.TemporaryDirectory() as run_dir:
        code = _FOOTPRINT.format(cfg=cfg.__dict__, run_dir=run_dir)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the footprint process failed: {out.stderr.strip().splitlines()[-1:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def naive_candidate(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    spec: PerturbationSpec | None,
    max_new_tokens: int,
    stop: Sequence[str],
) -> list[str]:
    """What peer scripts do per candidate: clone every weight, add noise, one padded `generate`, copy back.

    The noise is ours (the same spec), so both loops score the same models and must agree.
    """

    params = dict(model.named_parameters(remove_duplicate=True))
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        if spec is not None:
            add_noise_(spec, [(n, p.detach().numpy()) for n, p in params.items() if spec.filter.keeps(n)])
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        new = hf_generate_greedy(model, tok, enc, max_new_tokens, stop)
        for n, p in params.items():
            p.copy_(saved[n])
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return [cut_at_stop(t, stop) for t in texts]


def _top(scores: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def bench(cfg: BenchConfig = BenchConfig(), progress: bool = True) -> dict[str, Any]:
    """All figures of BENCHMARKS.md, as one dict (the keys `thickets bench --json` writes)."""

    results: dict[str, Any] = {"config": cfg.__dict__ | {"batch_sizes": list(cfg.batch_sizes)}}
    t0 = time.perf_counter()
    loaded, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
    engine = cast("TransformersEngine", loaded)  # load_engine's default engine
    results["first_load_s"] = time.perf_counter() - t0  # includes a one-time GGUF conversion if not cached
    footprint = search_footprint(cfg)  # a fresh process: load time and memory, undisturbed by this one
    model, tok = engine.model, engine.tokenizer
    n_params = sum(p.numel() for p in engine.params.values())
    results["params"] = n_params
    results["model_gb"] = 4 * n_params / 2**30

    # -- search: `thickets search` vs the naive loop, same candidates, same validation examples ----
    task = get_task(cfg.task)
    val, _ = make_splits(task, 0, cfg.val_size)
    config = SearchConfig(
        model=cfg.model,
        task=cfg.task,
        population=cfg.candidates,
        sigmas=(cfg.sigma,),
        val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )
    specs = [config.candidate(i) for i in range(cfg.candidates)]
    prompts = [render_prompt(tok, ex.prompt, task.system_prompt, config.chat_template) for ex in val]
    # candidate by candidate, the two sides in turn (A B A B ...), the base first as both score it: ours is
    # what a search's executor runs per candidate (scoring.evaluate: perturb, chunked generation, score,
    # restore), theirs what peer scripts do (clone, noise, one padded generate, copy back)
    ours, naive, t_ours, t_naive = [], [], 0.0, 0.0
    with bar("bench: search vs naive loop", cfg.candidates + 1, progress) as update:
        for spec in [None, *specs]:
            t = time.perf_counter()
            rows = evaluate(engine, task, val, config, spec)
            t_ours += time.perf_counter() - t
            t = time.perf_counter()
            completions = naive_candidate(model, tok, prompts, spec, cfg.max_new_tokens, task.stop)
            t_naive += time.perf_counter() - t
            if spec is not None:
                ours.append(sum(r.score.reward for r in rows) / len(val))
                naive.append(sum(s.reward for s in task.score_batch(val, completions)) / len(val))
            update()

    # perturb and restore alone, to know their share of a candidate; each noise version in turn (A B A B)
    perturb: dict[int, list[float]] = {1: [], 2: []}
    for spec in specs:
        for version in perturb:
            t = time.perf_counter()
            engine.perturb(replace(spec, version=version))
            engine.restore()
            perturb[version].append(time.perf_counter() - t)
    # the floor any dense perturbation stands on: reading every base tensor once and writing its working copy
    # once (a plain copy), timed the same way; perturbing reads a noise table besides
    moved = list(engine.params.values())  # the search perturbs every parameter (the default filter)
    copies = [torch.empty_like(p) for p in moved]
    floor = []
    for _ in specs:
        t = time.perf_counter()
        with torch.no_grad():
            for buf, p in zip(copies, moved):
                buf.copy_(p)
        floor.append(time.perf_counter() - t)
    del copies
    results["copy_floor_s"] = min(floor)
    per_candidate = t_ours / (cfg.candidates + 1)
    for version, times in perturb.items():
        results[f"noise_v{version}_ns_per_param"] = 1e9 * min(times) / n_params
    results["noise_v1_vs_v2"] = min(perturb[1]) / min(perturb[2])
    made_with = perturb[1 if config.noise_version == 1 else 2]  # versions 2 and 3 share the gaussian map
    results.update(
        {
            "search_candidates_per_hour": 3600 * (cfg.candidates + 1) / t_ours,
            "naive_candidates_per_hour": 3600 * (cfg.candidates + 1) / t_naive,
            "search_vs_naive": t_naive / t_ours,
            "same_scores": all(abs(a - b) < 1e-9 for a, b in zip(ours, naive)),
            "same_top_k": _top(ours, cfg.top_k) == _top(naive, cfg.top_k),
            "perturb_restore_s": min(made_with),
            "candidate_s": per_candidate,
            "perturb_share": min(made_with) / per_candidate,
            "perturb_vs_copy": min(made_with) / min(floor),
        }
    )
    results.update(bench_decode.measure(engine, cfg.batch_sizes, cfg.decode_tokens, progress=progress))
    lowrank = [replace(config.candidate(i), strategy="lowrank", rank=cfg.rank) for i in range(cfg.population_batch)]
    full = [config.candidate(i) for i in range(cfg.population_batch)]
    results.update(
        bench_population.measure(engine, prompts, lowrank, full, cfg.max_new_tokens, task.stop, progress=progress)
    )
    # the budget: 2 x the float32 model (the base and the perturbed copy) + the KV cache
    # of a search's batch (batch_size rows, the longest validation prompt plus max_new_tokens)
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", c.num_attention_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    longest = max(len(tok(p, add_special_tokens=False).input_ids) for p in prompts) + cfg.max_new_tokens
    kv_gb = 2 * c.num_hidden_layers * min(cfg.batch_size, cfg.val_size) * kv_heads * head_dim * longest * 4 / 2**30
    results.update(footprint)
    results["kv_cache_gb"] = kv_gb
    results["peak_above_baseline_gb"] = footprint["peak_rss_gb"] - footprint["baseline_rss_gb"]
    results["memory_budget_gb"] = 2 * results["model_gb"] + kv_gb
    results["peak_vs_budget"] = results["peak_above_baseline_gb"] / results["memory_budget_gb"]
    # what a search holds besides the budget, named: noise version 2's normal table (one copy on a CPU) and
    # what loading holds before a weight is read (the tokenizer, the model's modules); the rest is unnamed
    results["noise_table_gb"] = 4 * TABLE_SIZE / 2**30
    results["load_overhead_gb"] = footprint["loaded_rss_gb"] - footprint["baseline_rss_gb"]
    results["unnamed_gb"] = (
        results["peak_above_baseline_gb"]
        - results["memory_budget_gb"]
        - results["noise_table_gb"]
        - results["load_overhead_gb"]
    )
    return results


TARGETS = {  # figure: (target, higher is better), the targets thickets' speed work set itself (issue 31's)
    "decode_vs_hf_b32": (2.5, True),
    "roofline_fraction_b32": (0.85, True),
    "search_vs_naive": (2.0, True),
    "perturb_share": (0.02, False),
    "search_vs_inference": (0.95, True),
    "warm_load_s": (3.0, False),
    "peak_vs_budget": (1.0, False),
}
