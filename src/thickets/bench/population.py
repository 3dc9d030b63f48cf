"""What a candidate costs against plain inference: population-batched low-rank experts, the base model's
own batched generation of the same rows, and full-rank candidates one at a time, timed interleaved.

Three ways to spend the same compute on the same prompts, in turn (A B C A B C ...), so a change of
load on the machine falls on all three alike:

- population: M low-rank experts, each answering every prompt, as one batch of M x prompts rows;
- inference: the base model answering the same M x prompts rows as one batch (what a search could
  at best hope for: plain batched generation, no perturbation at all);
- one at a time: M full-rank candidates, each perturbed, answering the prompts, restored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from thickets.engines import count_tokens
from thickets.noise import PerturbationSpec
from thickets.progress import bar

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


def measure(
    engine: TransformersEngine,
    prompts: Sequence[str],
    specs_lowrank: Sequence[PerturbationSpec],
    specs_full: Sequence[PerturbationSpec],
    max_new_tokens: int,
    stop: Sequence[str],
    repeats: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Generated tokens/s of each side (best of `repeats`) and the ratios BENCHMARKS.md records."""
    m, tok = len(specs_lowrank), engine.tokenizer
    saved_batch = engine.batch_size
    best: dict[str, tuple[float, int]] = {}

    def population() -> list[str]:  # batch_size prompts x m experts per forward, as a search batches them
        engine.batch_size = saved_batch
        return [c for per in engine.generate_population(specs_lowrank, prompts, max_new_tokens, stop) for c in per]

    def inference() -> list[str]:  # the same number of rows per forward
        engine.batch_size = m * saved_batch
        return engine.generate(list(prompts) * m, max_new_tokens, stop)

    def one_at_a_time() -> list[str]:
        engine.batch_size = saved_batch
        out: list[str] = []
        for spec in specs_full:
            engine.perturb(spec)
            try:
                out += engine.generate(prompts, max_new_tokens, stop)
            finally:
                engine.restore()
        return out

    sides = {"population": population, "inference": inference, "one_at_a_time": one_at_a_time}
    try:
        with bar("bench: population", repeats * len(sides), progress) as update:
            for _ in range(repeats):
                for name, fn in sides.items():
                    t = time.perf_counter()
                    texts = fn()
                    seconds = time.perf_counter() - t
                    tokens = count_tokens(tok, texts)
                    if name not in best or tokens / seconds > best[name][1] / best[name][0]:
                        best[name] = (seconds, tokens)
                    update()
    finally:
        engine.batch_size = saved_batch
    tok_s = {name: tokens / seconds for name, (seconds, tokens) in best.items()}
    candidates_per_hour = {
        "population": 3600 * m / best["population"][0],
        "one_at_a_time": 3600 * len(specs_full) / best["one_at_a_time"][0],
    }
    return {
        "population": {
            "experts": m,
            "rank": specs_lowrank[0].rank,
            "prompts": len(prompts),
            **{f"{name}_tok_s": v for name, v in tok_s.items()},
            **{f"{name}_candidates_per_hour": v for name, v in candidates_per_hour.items()},
        },
        "search_vs_inference": tok_s["population"] / tok_s["inference"],
        "lowrank_batched_vs_fullrank_candidates": candidates_per_hour["population"]
        / candidates_per_hour["one_at_a_time"],
    }
