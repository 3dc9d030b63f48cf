"""Three measurements behind issue 31's write-up in BENCHMARKS.md, each a ratio timed side by side in one
process on the embedded model (float32, this machine's CPU):

- `fuse`: a layer's q/k/v projections and its gate/up projections as separate matrix multiplies (what the
  decoders do) against one multiply over the concatenated weights (what a fused decoder would do), at
  the model's shapes, every layer's own weights, batch sizes 8, 32 and 128; best of 5.
- `overlap`: a candidate's generation alone, its dense perturbation alone, and the perturbation made in
  another thread (into a spare buffer, as a double-buffered search would) while the generation runs.
- `population`: where a population batch's time goes (cProfile): the base model's matrix multiplies, the
  experts' low-rank products, the hooks' own Python and additions, the rest; beside plain inference of
  the same rows.

    .venv/bin/python scripts/speed_probes.py fuse
    .venv/bin/python scripts/speed_probes.py overlap
    .venv/bin/python scripts/speed_probes.py population
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from thickets.engines import load_engine, render_prompt
from thickets.engines.device_noise import perturbed_into_
from thickets.randopt.config import SearchConfig
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits

MODEL = "smollm2-135m"


def _best_ms(fn: Callable[[], Any], calls: int = 20, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return 1e3 * best


def fuse() -> None:
    engine, _ = load_engine(MODEL)
    layers = engine.model.model.layers
    sep = [(L.self_attn.q_proj.weight, L.self_attn.k_proj.weight, L.self_attn.v_proj.weight) for L in layers]
    mlp = [(L.mlp.gate_proj.weight, L.mlp.up_proj.weight) for L in layers]
    qkv = [torch.cat(ws) for ws in sep]
    gate_up = [torch.cat(ws) for ws in mlp]
    with torch.inference_mode():
        for batch in (8, 32, 128):
            x = torch.randn(batch, qkv[0].shape[1])

            def separate(x: torch.Tensor = x) -> None:
                for ws in (*sep, *mlp):
                    for w in ws:
                        F.linear(x, w)

            def fused(x: torch.Tensor = x) -> None:
                for w in (*qkv, *gate_up):
                    F.linear(x, w)

            a, b = _best_ms(separate), _best_ms(fused)
            print(f"batch {batch}: separate {a:.1f} ms, fused {b:.1f} ms, fused speed-up {a / b:.2f}x")


def _workload(batch: int = 32) -> tuple[Any, Any, list[str], SearchConfig]:
    engine, _ = load_engine(MODEL, batch_size=batch)
    task = get_task("products")
    val, _ = make_splits(task, 0, batch)
    config = SearchConfig(  # the bench's workload: 12 new tokens at most
        model=MODEL, task="products", population=8, sigmas=(0.001,), val_size=batch, max_new_tokens=12
    )
    prompts = [render_prompt(engine.tokenizer, ex.prompt, task.system_prompt, True) for ex in val]
    return engine, task, prompts, config


def overlap() -> None:
    engine, task, prompts, config = _workload()
    spare = {n: torch.empty_like(p) for n, p in engine._base.items()}

    def noise(i: int) -> None:
        spec = config.candidate(i)
        for n, base in engine._base.items():
            perturbed_into_(spare[n], base, spec, n)

    def generate() -> None:
        engine.generate(prompts, config.max_new_tokens, task.stop)

    generate()
    noise(0)
    for i in range(3):
        t = time.perf_counter()
        generate()
        gen = time.perf_counter() - t
        t = time.perf_counter()
        noise(i)
        made = time.perf_counter() - t
        t = time.perf_counter()
        thread = threading.Thread(target=noise, args=(i + 1,))
        thread.start()
        generate()
        thread.join()
        both = time.perf_counter() - t
        print(
            f"generation {gen:.3f} s + perturbation {made:.3f} s = {gen + made:.3f} s one after the other; "
            f"{both:.3f} s overlapped ({(gen + made) / both:.2f}x)"
        )


GROUPS = {  # substrings of cProfile's "file:function" of each group's own (self) time
    "base matrix multiplies": ("torch._C._nn.linear",),
    "low-rank products": ("torch.bmm", "'matmul'", "__matmul__"),
    "hooks' Python and additions": ("population.py",),
    "attention": ("scaled_dot_product_attention",),
}


def population(experts: int = 4, rank: int = 4) -> None:
    engine, task, prompts, config = _workload()
    specs = [replace(config.candidate(i), strategy="lowrank", rank=rank) for i in range(experts)]
    n = config.max_new_tokens

    def together() -> None:
        engine.generate_population(specs, prompts, n, task.stop)

    def inference() -> None:
        engine.batch_size = experts * len(prompts)
        try:
            engine.generate(list(prompts) * experts, n, task.stop)
        finally:
            engine.batch_size = len(prompts)

    for fn in (together, inference):
        fn()
    times = {"together": float("inf"), "inference": float("inf")}
    for _ in range(2):
        for name, fn in (("together", together), ("inference", inference)):
            t = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t)
    print(
        f"{experts} rank-{rank} experts x {len(prompts)} prompts: {times['together']:.2f} s; the base model on the "
        f"same rows {times['inference']:.2f} s ({times['inference'] / times['together']:.2f} of its speed)"
    )
    profiler = cProfile.Profile()
    profiler.enable()
    together()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    shares = dict.fromkeys(GROUPS, 0.0)
    for (file, _, func), (_, _, tt, _, _) in stats.items():
        where = f"{file}:{func}"
        for group, keys in GROUPS.items():
            if any(k in where for k in keys):
                shares[group] += tt
                break
    for group, tt in shares.items():
        print(f"  {group}: {tt / total:.1%}")
    print(f"  the rest: {1 - sum(shares.values()) / total:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=("fuse", "overlap", "population"))
    args = parser.parse_args()
    {"fuse": fuse, "overlap": overlap, "population": population}[args.probe]()


if __name__ == "__main__":
    main()
