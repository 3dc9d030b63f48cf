"""Measurements behind issue 31's write-up in BENCHMARKS.md, each a ratio timed side by side in one
process on the embedded model (float32, this machine's CPU):

- `fuse`: a layer's q/k/v projections and its gate/up projections as separate matrix multiplies (what the
  decoders do) against one multiply over the concatenated weights (what a fused decoder would do), at
  the model's shapes, every layer's own weights, batch sizes 8, 32 and 128; best of 5.
- `overlap`: a candidate's generation alone, its dense perturbation alone, and the perturbation made in
  another thread (into a spare buffer, as a double-buffered search would) while the generation runs.
- `population`: where a population batch's time goes (cProfile): the base model's matrix multiplies, the
  experts' low-rank products, the hooks' own Python and additions, the rest; beside plain inference of
  the same rows.
- `whole-step`: the whole decode step (cache writes included) as one compiled graph, against the eager
  step, batch 32: compile time, speed, and whether the argmax tokens agree.
- `fused-noise`: one compiled kernel that gathers the noise windows, scales them and adds them to the
  base, against `perturbed_into_`'s eager passes, on three tensor sizes of the model: speed and bits.
- `compile-cache`: the compiled step's compile time in a fresh process with an empty kernel cache, then in
  a second fresh process that finds the first one's cache (the first compiled generation's time less
  an eager one's, batch 32).
- `product-inside`: `baddbmm_`/`addmm_` into the output against making h @ A.T and adding it, the
  unmerged adapter's float32 step, at ranks 1-64 and three shapes: are the bits the same.

    .venv/bin/python scripts/speed_probes.py fuse          # likewise overlap, population, whole-step, ...
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
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


def whole_step(batch: int = 32, length: int = 128) -> None:
    from thickets.engines import fast_decode as fd

    engine, _ = load_engine(MODEL)
    dec = fd._Decoder(engine.model, batch, length, torch.device("cpu"))
    cos_t, sin_t = dec.rope_table(length + 1)
    torch.manual_seed(0)

    def step(tok: torch.Tensor, pos: torch.Tensor, col: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        cos, sin = cos_t[pos][:, None, None], sin_t[pos][:, None, None]
        x = dec.embed_tokens(tok[:, None])
        for i, L in enumerate(dec.layers):
            q, k, v = fd._block_in(x, L.ln1, L.eps1, L.q, L.k, L.v, cos, sin, dec.n_heads, dec.n_kv, dec.hd)
            dec.k[i].index_copy_(2, col.view(1), k)
            dec.v[i].index_copy_(2, col.view(1), v)
            a = fd._attend(q, dec.k[i], dec.v[i], dec.scaling, dec.group, keys[:, None, None, :], False)
            x = fd._block_out(x, a, L.o, L.ln2, L.eps2, L.gate, L.up, L.down)
        logits: torch.Tensor = dec.head(fd._rms_norm(x[:, -1], dec.norm, dec.norm_eps))
        return logits.argmax(-1)

    tok, pos, col = torch.randint(0, 1000, (batch,)), torch.full((batch,), 50), torch.tensor(60)
    keys = torch.zeros(batch, length, dtype=torch.bool)
    keys[:, :61] = True
    with torch.inference_mode():
        dec.k.normal_()
        dec.v.normal_()
        compiled = torch.compile(step, dynamic=False)
        t = time.perf_counter()
        got = compiled(tok, pos, col, keys)
        compile_s = time.perf_counter() - t
        eager_ms = _best_ms(lambda: step(tok, pos, col, keys), calls=5, rounds=3)
        compiled_ms = _best_ms(lambda: compiled(tok, pos, col, keys), calls=5, rounds=3)
        same = torch.equal(got, step(tok, pos, col, keys))
    print(
        f"whole step compiled: {compile_s:.0f} s to compile; eager {eager_ms:.0f} ms, compiled {compiled_ms:.0f} ms "
        f"({eager_ms / compiled_ms:.2f}x); same tokens: {same}"
    )


def fused_noise() -> None:
    from thickets.engines import device_noise as dn
    from thickets.noise import WINDOW, PerturbationSpec, window_offsets, window_span

    cpu = torch.device("cpu")
    dn.table_on(cpu)
    flat = dn._tables[cpu]

    def fused(base: torch.Tensor, offsets: torch.Tensor, skip: int, factor: float) -> torch.Tensor:
        rows = flat.as_strided((flat.numel() - WINDOW + 1, WINDOW), (1, 1))[offsets]
        noise: torch.Tensor = rows.view(-1)[skip : skip + base.numel()]
        return base + noise * factor

    compiled = torch.compile(fused, dynamic=True)
    spec = PerturbationSpec(7, 0.001)
    for n in (576 * 576, 576 * 1536, 49152 * 576):
        base, out = torch.randn(n), torch.empty(n)
        first, count, skip = window_span(0, n)
        offsets = torch.from_numpy(window_offsets(spec.seed, "w", first, count))
        compiled(base, offsets, skip, spec.sigma)
        eager = _best_ms(partial(dn.perturbed_into_, out, base, spec, "w"), calls=5)
        fast = _best_ms(partial(compiled, base, offsets, skip, spec.sigma), calls=5)
        same = torch.equal(out, compiled(base, offsets, skip, spec.sigma))
        print(f"{n:,} parameters: eager passes {eager:.2f} ms, one compiled kernel {fast:.2f} ms; same bits: {same}")


def product_inside() -> None:
    differ = 0
    cases = 0
    for rank in (1, 4, 16, 64):
        g = torch.Generator().manual_seed(rank)
        for lead in ((), (3,)):
            for rows, out in ((1, 7), (37, 576), (128, 1536)):
                output = torch.randn(*lead, rows, out, generator=g)
                h = torch.randn(*lead, rows, rank, generator=g) * 0.01
                a_t = torch.randn(*lead, rank, out, generator=g)
                want = output + h @ a_t
                (output.baddbmm_ if lead else output.addmm_)(h, a_t)
                cases += 1
                differ += not torch.equal(output, want)
    print(f"the product taken inside the multiply differs from product-then-add in {differ} of {cases} cases")


def _first_compiled_call() -> None:
    from thickets.bench.decode import _ours, _prompts

    engine, _ = load_engine(MODEL)
    tok = engine.tokenizer
    enc = tok(_prompts(tok, 32), return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tok.pad_token_id
    _ours(engine.model, enc, 4, pad)
    t = time.perf_counter()
    _ours(engine.model, enc, 4, pad)
    eager = time.perf_counter() - t
    t = time.perf_counter()
    _ours(engine.model, enc, 4, pad, compiled=True)
    print(f"{time.perf_counter() - t - eager:.1f}")


def compile_cache() -> None:
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as kernels:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": kernels}
        code = "import sys; sys.path.insert(0, 'scripts'); import speed_probes; speed_probes._first_compiled_call()"
        runs = [
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)
        ]
    cold, warm = (float(r.stdout.strip().splitlines()[-1]) for r in runs)
    print(f"compiling the decode step: {cold:.1f} s with an empty kernel cache, {warm:.1f} s with the first one's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    probes = {
        "fuse": fuse,
        "overlap": overlap,
        "population": population,
        "whole-step": whole_step,
        "fused-noise": fused_noise,
        "product-inside": product_inside,
        "compile-cache": compile_cache,
    }
    parser.add_argument("probe", choices=tuple(probes))
    probes[parser.parse_args().probe]()


if __name__ == "__main__":
    main()
