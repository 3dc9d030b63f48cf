"""`thickets bench`'s settings."""

from __future__ import annotations

from dataclasses import dataclass

from thickets.errors import ThicketsError
from thickets.options import commas, option, parse_ints


@dataclass(frozen=True)
class BenchConfig:
    """`thickets bench`: the figures of BENCHMARKS.md, measured side by side in one run."""

    model: str = option("smollm2-135m", "model to time")
    task: str = option("products", "task whose prompts are generated")
    candidates: int = option(6, "candidates per side of the search comparison")
    val_size: int = option(48, "validation examples per candidate (the demo's workload)")
    batch_size: int = option(32, "prompts the search generates together (the demo's)")
    max_new_tokens: int = option(12, "tokens per answer in the search comparison")
    sigma: float = option(1e-3, "noise scale of the candidates")
    batch_sizes: tuple[int, ...] = option(
        (1, 8, 32), "batch sizes of the decode comparison", parse=parse_ints, show=commas
    )
    decode_tokens: int = option(32, "tokens per row in the decode comparison")
    top_k: int = option(3, "the K whose agreement the search comparison checks")
    population_batch: int = option(4, "low-rank experts batched together in the population comparison")
    rank: int = option(4, "their rank")

    def __post_init__(self) -> None:
        if (
            not self.batch_sizes
            or self.candidates < 1
            or self.val_size < 1
            or self.decode_tokens < 2
            or min(self.batch_sizes) < 1
            or self.population_batch < 1
            or self.batch_size < 1
            or self.rank < 1
        ):
            raise ThicketsError(
                "--candidates, --val-size, --batch-size, --batch-sizes, --population-batch and --rank must be "
                "at least 1, --decode-tokens at least 2"
            )
