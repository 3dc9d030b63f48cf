"""`thickets distill`'s settings: one field per flag, the help on the field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from thickets.distill.traces import MODES
from thickets.errors import ThicketsError
from thickets.options import option
from thickets.randopt.config import MAX_SPLIT


@dataclass(frozen=True)
class DistillConfig:
    """Iterative RandOpt (Gan & Isola's later branch): search, keep the top-K experts' good traces on a
    train split, fine-tune one model on them, search again around it."""

    rounds: int = option(2, "search + traces + fine-tune rounds; round 1 uses the run's own search")
    top_k: int = option(8, "experts whose answers become traces")
    samples: int = option(0, "answers per expert and question: 0 for one greedy answer, S for S samples")
    temperature: float = option(1.0, "sampling temperature with --samples")
    max_traces: int = option(8, "traces kept per question at most, across rounds")
    train_size: int = option(
        256,
        "train questions, disjoint from validation and test: as many as the paper's top-8 are scored on, "
        "enough to teach the format and answers without costing more than a few searches' generation",
    )
    test_size: int = option(150, "test questions of each round's report (the train split never holds them)")
    filter: str = option(
        "auto",
        "keep traces that are correct (gold), or agree with the vote (vote); auto: gold if the task checks answers",
        choices=MODES,
    )
    full: bool = option(False, "full fine-tuning instead of LoRA (merged on save)")
    lora_r: int = option(64, "LoRA rank")
    learning_rate: float = option(1e-4, "fine-tuning learning rate")
    epochs: float = option(2.0, "passes over the kept traces")
    train_batch_size: int = option(8, "traces per optimiser step")
    seed: int = option(0, "seed of the samples and of the fine-tune")

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 100:
            raise ThicketsError(f"rounds must be between 1 and 100, got {self.rounds}")
        if self.top_k < 1:
            raise ThicketsError(f"top-k must be at least 1, got {self.top_k}")
        if self.samples < 0 or (self.samples and not (self.temperature > 0 and math.isfinite(self.temperature))):
            raise ThicketsError("--samples must be >= 0, and sampling needs a positive --temperature")
        if self.max_traces < 1:
            raise ThicketsError(f"max-traces must be at least 1, got {self.max_traces}")
        for what, n in (("train-size", self.train_size), ("test-size", self.test_size)):
            if not 1 <= n <= MAX_SPLIT:
                raise ThicketsError(f"{what} must be between 1 and {MAX_SPLIT:,}, got {n}")
        if self.lora_r < 1 or not self.learning_rate > 0 or not self.epochs > 0 or self.train_batch_size < 1:
            raise ThicketsError("lora-r, learning-rate, epochs and train-batch-size must be positive")
