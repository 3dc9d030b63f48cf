"""`thickets toy`'s settings (kept apart from the experiment so the command line needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thickets.options import commas, option, parse_floats


@dataclass(frozen=True)
class ToyConfig:
    """The 1D signal experiment's settings; `quick()` is a smaller grid."""

    population: int = option(1000, "perturbations per cell (quick: 300)")
    top_k: int = option(10, "the K of the top-K error")
    sigma_none: float = option(0.05, "sigma around unpretrained models")
    sigma_pretrained: float = option(0.002, "sigma around pretrained models")
    sweep: tuple[float, ...] = option(
        (0.25, 0.5, 2.0, 4.0, 10.0), "sigma sweep, in multiples of the regime's sigma", parse=parse_floats, show=commas
    )
    sweep_population: int = option(200, "perturbations per point of the sweep")
    margin: float = option(0.1, "'improving': at least this share below the base's error")
    width: int = option(128, "hidden width of the MLP")
    depth: int = option(5, "linear layers of the MLP")
    pretrain_steps: int = option(3000, "pretraining steps")
    pretrain_batch: int = option(256, "pretraining batch size")
    pretrain_signals: int = option(4096, "pretraining signals per family")
    family_targets: int = option(16, "signals of a family target")
    seed: int = option(0, "seed of everything")

    @classmethod
    def quick(cls, **over: Any) -> ToyConfig:
        return cls(
            **{
                "population": 300,
                "sweep": (0.5, 4.0),
                "sweep_population": 100,
                "pretrain_steps": 1200,
                "family_targets": 8,
                **over,
            }
        )
