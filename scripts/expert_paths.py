"""One definition of a low-rank expert, counted (issue 25): for tiny random models of several architectures,
in float32 and bfloat16, how many completions each path gives equal to scoring each expert alone.

Paths: `population` (M experts in one batched pass: search, ensemble, ES), `merged` (the weights
`thickets export` writes, the adapter merged into them). Serving, the vote and Ray workers run the
alone path itself (Engine.perturb). In bfloat16 the merged weights round the change, so they are the
expert only approximately, as the README says. Run from the repository root:
`.venv/bin/python scripts/expert_paths.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engines.test_hf_decode import _tiny
from tests.engines.test_population import OTHERS, PROMPTS, _alone, _merged, _other

from thickets.engines.transformers_engine import TransformersEngine
from thickets.noise import ParamFilter, PerturbationSpec

#: what each family leaves out: the matrices no adapter can carry (refused by name otherwise)
EXCLUDE = {"opt": ("*embed_positions*",), "mixtral": ("*.mlp.experts.*", "*.mlp.gate.*")}
TOKENS = 12


def engine_for(family: str, dtype: torch.dtype) -> TransformersEngine:
    if family in OTHERS:
        return _other(family, dtype)
    model, tok = _tiny(family)
    return TransformersEngine(model.to(dtype), tok, batch_size=3)


def main() -> None:
    print("| architecture | dtype | experts x prompts | population = alone | merged = alone |")
    print("|---|---|---:|---:|---:|")
    for family in ("llama", "qwen2", "gemma2", "gpt2", "opt", "mixtral"):
        for dtype in (torch.float32, torch.bfloat16):
            engine = engine_for(family, dtype)
            keep = ParamFilter(exclude=EXCLUDE.get(family, ()))
            specs = [PerturbationSpec(s, 0.05, "lowrank", keep, rank=2) for s in (1, 2, 3, 4)]
            alone = _alone(engine, specs, PROMPTS, TOKENS)
            together = engine.generate_population(specs, PROMPTS, TOKENS)
            merged = _merged(engine, specs, PROMPTS, TOKENS)
            n = len(specs) * len(PROMPTS)

            def equal(other: list[list[str]], alone: list[list[str]] = alone) -> int:
                return sum(a == b for x, y in zip(other, alone) for a, b in zip(x, y))

            name = str(dtype).removeprefix("torch.")
            print(f"| {family} | {name} | {n} | {equal(together)} | {equal(merged)} |")


if __name__ == "__main__":
    main()
