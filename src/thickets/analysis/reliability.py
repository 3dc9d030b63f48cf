"""How much of a run's ranking is the candidates and how much is its validation questions: the split-half
reliability of the validation score, from the stored per-example results (nothing is generated).

Each fully scored candidate's mean reward on the even and on the odd validation positions; the
correlation of the two across candidates, corrected to the whole split by Spearman-Brown
(2r / (1 + r)), is the share of the spread of validation scores that a second validation split of the
same size would reproduce. Below about 0.5, the top of the ranking is mostly luck of the questions.
The same formula gives the validation size that would reach a target reliability.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from thickets.randopt.store import RunStore, candidate_model

#: the reliability the recommended validation size aims at (a common bar for a measurement)
TARGET = 0.8


def spearman_brown(r: float, factor: float) -> float:
    """The reliability of a test `factor` times as long as one whose reliability is r."""
    return factor * r / (1 + (factor - 1) * r)


def split_half(run_dir: str | Path, target: float = TARGET) -> dict[str, Any] | None:
    """The split-half reliability of a run's validation scores, or None with fewer than 3 fully scored
    candidates, fewer than 4 validation questions, or no spread to correlate."""
    with RunStore.open(run_dir, write=False) as store:
        n_val = store.config.val_size
        halves = []
        for c in store.candidates():
            if not c.complete:
                continue
            scores = store.scores(candidate_model(c.idx), "val")
            even = [s.reward for p, s in scores.items() if p % 2 == 0 and not s.unscored]
            odd = [s.reward for p, s in scores.items() if p % 2 == 1 and not s.unscored]
            if even and odd:
                halves.append((sum(even) / len(even), sum(odd) / len(odd)))
    if len(halves) < 3 or n_val < 4:
        return None
    a, b = np.array(halves).T
    if a.std() == 0 or b.std() == 0:
        return None
    r = float(np.corrcoef(a, b)[0, 1])
    full = spearman_brown(r, 2.0) if r > -1 else -1.0  # halves exactly opposed: no reliability at any length
    needed = None
    if 0 < full < target:  # the length factor that takes `full` to `target`, in questions
        needed = math.ceil(n_val * target * (1 - full) / (full * (1 - target)))
    return {
        "candidates": len(halves),
        "val_size": n_val,
        "half_correlation": r,
        "reliability": full,
        "target": target,
        "val_size_for_target": needed,
    }


def reliability_line(rel: dict[str, Any] | None) -> str:
    """One line a person reads after a search."""
    if rel is None:
        return "split-half reliability: not enough fully scored candidates, questions or spread to measure"
    line = (
        f"split-half reliability of the validation score: {rel['reliability']:.2f} "
        f"(halves correlate {rel['half_correlation']:.2f} over {rel['candidates']} candidates)"
    )
    if rel["reliability"] <= 0:
        return line + "; the ranking is the luck of the questions: more validation questions are needed"
    if rel["val_size_for_target"] is not None and rel["reliability"] < rel["target"]:
        line += f"; {rel['val_size_for_target']} validation questions would reach {rel['target']:.1f}"
    return line
