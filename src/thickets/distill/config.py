"""`thickets distill`'s settings: one field per flag, the help on the field."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from thickets.distill.traces import MODES
from thickets.errors import ThicketsError
from thickets.options import MAX_RATE, SEEDS, check_bounds, option
from thickets.randopt.config import MAX_SPLIT

#: what the student is trained towards: the kept traces' tokens (ce), or the experts' next-token probabilities
#: on them by forward KL, reverse KL or Jensen-Shannon divergence (teacher.py)
LOSSES = ("ce", "kd-fkl", "kd-rkl", "kd-jsd")


@dataclass(frozen=True)
class DistillConfig:
    """Iterative RandOpt (Gan & Isola's later branch): search, keep the top-K experts' good traces on a
    train split, fine-tune one model on them, search again around it."""

    rounds: int = option(2, "search + traces + fine-tune rounds; round 1 uses the run's own search", bounds=(1, 100))
    top_k: int = option(8, "experts whose answers become traces", bounds=(1, 10_000))
    samples: int = option(
        0, "answers per expert and question: 0 for one greedy answer, S for S samples", bounds=(0, 1024)
    )
    temperature: float = option(1.0, "sampling temperature with --samples", bounds=(0, 100))
    max_traces: int = option(8, "traces kept per question at most, across rounds", bounds=(1, 100_000))
    train_size: int = option(
        256,
        "train questions, disjoint from validation and test: as many as the paper's top-8 are scored on, "
        "enough to teach the format and answers without costing more than a few searches' generation",
        bounds=(1, MAX_SPLIT),
    )
    test_size: int = option(
        150, "test questions of each round's report (the train split never holds them)", bounds=(1, MAX_SPLIT)
    )
    filter: str = option(
        "auto",
        "keep traces that are correct (gold), or agree with the vote (vote); auto: gold if the task checks answers",
        choices=MODES,
    )
    full: bool = option(False, "full fine-tuning instead of LoRA (merged on save)")
    lora_r: int = option(64, "LoRA rank", bounds=(1, 65_536))
    learning_rate: float = option(1e-4, "fine-tuning learning rate", bounds=(0, MAX_RATE))
    epochs: float = option(2.0, "passes over the kept traces", bounds=(0, 1000))
    train_batch_size: int = option(8, "traces per optimiser step", bounds=(1, 65_536))
    seed: int = option(0, "seed of the samples and of the fine-tune", bounds=SEEDS)
    loss: str = option(
        "ce",
        "ce: the kept traces' tokens (TRL's SFTTrainer); kd-fkl, kd-rkl, kd-jsd: the agreeing experts' next-token "
        "probabilities on them, by forward KL, reverse KL or Jensen-Shannon divergence",
        choices=LOSSES,
    )
    top_probs: int = option(20, "with --loss kd-*: next tokens kept per position of a trace", bounds=(1, 1000))
    on_policy: bool = option(
        False,
        "the round's model (the student before this round) answers the train split too; its good answers "
        "are trained on beside the experts' (taught by the agreeing experts' probabilities with --loss kd-*)",
    )
    keep_best: bool = option(
        False,
        "score each round's model on validation; each round starts from the best model so far, and the "
        "distillation names its best round (thickets export --round N)",
    )
    name: str = option(
        "distill",
        "the distillation's folder in the run folder: another name starts a distillation beside the others, "
        "so rounds made with other settings never mix",
        flag="--distillation",
    )
    #: fields that do not change what a round makes: how many rounds, and where they live
    NOT_ROUND_SETTINGS: ClassVar[tuple[str, ...]] = ("rounds", "name")

    def __post_init__(self) -> None:
        check_bounds(self)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise ThicketsError(
                f"--distillation must be a folder name of letters, digits, '.', '_' and '-', got {self.name!r}"
            )
        if self.loss not in LOSSES:
            raise ThicketsError(f"unknown --loss {self.loss!r}; use {', '.join(LOSSES)}")
        if self.samples and not self.temperature > 0:
            raise ThicketsError("sampling (--samples) needs a positive --temperature")
        if not (self.learning_rate > 0 and self.epochs > 0):
            raise ThicketsError(
                f"--learning-rate and --epochs must be above 0, got {self.learning_rate} and {self.epochs}"
            )

    def round_settings(self) -> dict[str, Any]:
        """What a round is made with (every field but NOT_ROUND_SETTINGS), as its record keeps it."""
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_ROUND_SETTINGS}
