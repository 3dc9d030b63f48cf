"""`thickets merge`'s settings: one field per flag (kept apart so the command line loads without torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from thickets.errors import ThicketsError
from thickets.options import check_bounds, commas, option, parse_floats
from thickets.randopt.config import MAX_SPLIT

METHODS = ("mean", "reward", "corp")
#: overall scales tried on validation by default
SCALES = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class MergeConfig:
    """`thickets merge`'s settings: one field per flag."""

    run_dir: str = option(..., "the run folder whose experts are merged")
    out: str = option(..., "folder to write the merged model to")
    top_k: int = option(5, "experts merged: the best K on validation", bounds=(1, 10_000))
    method: str = option(
        "mean",
        "mean: equal weights (the authors' average); reward: each expert weighted by its validation gain over "
        "the base; corp: the gain times the expert's agreement with the gain-weighted direction (CoRP)",
        choices=METHODS,
    )
    scales: tuple[float, ...] = option(
        SCALES,
        "overall scales of the weighted sum tried on validation (1: the weighted mean of the perturbations, whose "
        "size is about 1/sqrt(K) of one expert's)",
        flag="--scale",
        parse=parse_floats,
        show=commas,
    )
    adapter_base: str | None = option(
        None,
        "for low-rank experts, the base model folder the merged adapter names (default: the run's model folder "
        "on this machine)",
    )
    gate_size: int = option(
        150, "held-out test questions the merged model is gated on, paired with the base's", bounds=(1, MAX_SPLIT)
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.method not in METHODS:
            raise ThicketsError(f"unknown --method {self.method!r}; use {' or '.join(METHODS)}")
        if not self.scales or any(not (0 < s <= 100 and math.isfinite(s)) for s in self.scales):
            raise ThicketsError(f"--scale must be numbers in (0, 100], got {commas(self.scales) or 'none'}")
