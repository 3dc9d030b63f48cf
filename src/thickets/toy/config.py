"""`thickets toy`'s settings (kept apart from the experiment so the command line needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thickets.options import commas, option, parse_floats


@dataclass(frozen=True)
class ToyConfig:
    """The 1D signal experiment's settings; `quick()` is a smaller grid.

    Every regime is searched over the same sigma grid and each cell is reported at its own best
    sigma: the right sigma differs by more than 10x between a random initialisation and a
    pretrained model, and one fixed sigma per regime would measure the guess, not the thicket.
    """

    population: int = option(400, "perturbations per sigma of each cell (quick: 150)")
    top_k: int = option(10, "the K of the top-K error")
    sigmas: tuple[float, ...] = option(
        (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2), "sigma grid searched in every cell", parse=parse_floats, show=commas
    )
    gain: float = option(2.0, "'substantial': the error divided by at least this much (2: halved)")
    level: float = option(0.01, "'good': a rollout error (MSE) at most this, whatever the base's")
    width: int = option(128, "hidden width of the MLP")
    depth: int = option(5, "linear layers of the MLP")
    pretrain_steps: int = option(3000, "pretraining steps (quick: 1500)")
    pretrain_batch: int = option(256, "pretraining batch size")
    pretrain_signals: int = option(4096, "pretraining signals per family")
    family_targets: int = option(16, "signals of a family target (quick: 8)")
    seed: int = option(0, "seed of everything")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))

    @classmethod
    def quick(cls, **over: Any) -> ToyConfig:
        return cls(**{"population": 150, "pretrain_steps": 1500, "family_targets": 8, **over})
