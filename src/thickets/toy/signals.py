"""The 1D signal families of the paper's mechanism experiment, each with random parameters.

A signal is sampled at x = 0, 0.1, ..., so CONTEXT values start it and ROLLOUT values follow.
Amplitudes stay within about [-1.5, 1.5] so one model can read every family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np

CONTEXT = 10  # values the model reads
ROLLOUT = 60  # values it predicts, one at a time, from its own predictions
LENGTH = CONTEXT + ROLLOUT
STEP = 0.1
X = np.arange(LENGTH, dtype=np.float64) * STEP


def line(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1) + rng.uniform(-0.4, 0.4) * X


def sinusoid(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 1.2) * np.sin(rng.uniform(0.8, 3.0) * X + rng.uniform(0, 2 * math.pi))


def square(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 1.2) * np.sign(np.sin(rng.uniform(0.8, 2.5) * X + rng.uniform(0, 2 * math.pi)) + 1e-12)


def sawtooth(rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(1.5, 5.0)
    return rng.uniform(0.5, 1.2) * (2 * ((X / period + rng.uniform(0, 1)) % 1.0) - 1)


def harmonic(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0.8, 2.0)
    waves = (rng.uniform(0.2, 0.6) * np.sin(h * base * X + rng.uniform(0, 2 * math.pi)) for h in (1, 2, 3))
    return cast(np.ndarray, sum(waves))  # three arrays: never sum()'s start value 0


def sigmoid_step(rng: np.random.Generator) -> np.ndarray:
    amp, k, x0 = rng.uniform(0.8, 2.0), rng.uniform(2.0, 8.0), rng.uniform(2.0, 6.0)
    return rng.uniform(-1, 0) + amp / (1 + np.exp(-k * (X - x0)))


FAMILIES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "line": line,
    "sinusoid": sinusoid,
    "square": square,
    "sawtooth": sawtooth,
    "harmonic": harmonic,
    "sigmoid": sigmoid_step,
}

#: the specific post-training targets: one fixed signal each
SPECIFIC: dict[str, np.ndarray] = {
    "line(-0.25)": 0.5 - 0.25 * X,
    "one sinusoid": 0.9 * np.sin(1.7 * X + 0.4),
    "one square": 0.9 * np.sign(np.sin(1.3 * X + 0.3) + 1e-12),
}
#: the family each specific target is one of
SPECIFIC_FAMILY = {"line(-0.25)": "line", "one sinusoid": "sinusoid", "one square": "square"}


def sample(families: list[str], n: int, seed: int) -> np.ndarray:
    """n signals [n, LENGTH], families taken in turn, parameters random."""
    rng = np.random.default_rng(seed)
    return np.stack([FAMILIES[families[i % len(families)]](rng) for i in range(n)]).astype(np.float32)
