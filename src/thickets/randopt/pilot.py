"""Choosing sigma automatically: the pilot's schedule, its curve, and the choice, as pure functions.

A run with `--sigma auto` begins with a pilot: the grid of sigmas is walked in ascending order,
`per_sigma` candidates at each point (pilot candidate i has sigma grid[i // per_sigma]), and the
walk stops after the first point that collapses (its median candidate falls below `collapse` times
the base score): larger sigmas are never tried. Then the point where the density of improving
candidates (rule `density`) or the expected top-K gain (rule `topk`) is highest is chosen, or the
best `keep` points as a small grid, and the rest of the population takes them in round robin. The
pilot's candidates are ordinary candidates of the run: nothing is thrown away.

Nothing here knows about models, engines or the store: the search loop feeds scores in and gets a
choice out, so the rules are testable on a constructed score surface.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: how the pilot ranks its grid points: the share of candidates beating the base, or the mean of the
#: best quarter of a point's candidates minus the base (what a top-K selection can harvest)
RULES = ("density", "topk")
#: a 1-2-5 log grid from the authors' smallest command-line sigma (1e-4) to their largest (1e-2): it
#: spans the range a public re-analysis found productive for LLMs with independent noise per tensor
#: (1e-4 to 3e-3) and reaches the destructive side (5e-3 and up), where the walk stops at a collapse
DEFAULT_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
TOP_SHARE = 0.25  # the `topk` rule's upper tail: the best quarter of a point's candidates
RECORD_VERSION = 1


@dataclass(frozen=True)
class Point:
    """One grid point of the pilot, from its candidates' validation scores."""

    sigma: float
    n: int  # candidates scored at this sigma
    above_base: int  # of them, how many beat the base (strictly)
    density: float  # above_base / n
    density_ci95: tuple[float, ...]  # Wilson's 95% interval of the density (low, high)
    mean: float
    median: float
    best: float
    topk_gain: float  # mean of the best quarter (at least one) minus the base
    collapsed: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["density_ci95"] = list(self.density_ci95)
        return d


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson's 95% interval of a share: honest at 0% and 100% and for a few dozen candidates, where the
    normal interval is not."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def pilot_sigma(grid: Sequence[float], per_sigma: int, index: int) -> float:
    """The sigma of pilot candidate `index`: the grid in ascending order, `per_sigma` candidates each."""
    return grid[index // per_sigma]


def schedule(grid: Sequence[float], per_sigma: int) -> list[float]:
    """The sigma of every pilot candidate, index by index, were the whole grid walked."""
    return [pilot_sigma(grid, per_sigma, i) for i in range(len(grid) * per_sigma)]


def indices(point: int, per_sigma: int) -> range:
    """The candidate indices of grid point `point`."""
    return range(point * per_sigma, (point + 1) * per_sigma)


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def collapsed(scores: Sequence[float], base: float, collapse: float) -> bool:
    """A grid point has collapsed when its median candidate lost more than (1 - collapse) of the base's
    score: below half the base for collapse 0.5 and a positive base (a zero base never collapses)."""
    return median(scores) < base - (1.0 - collapse) * abs(base)


def topk_gain(scores: Sequence[float], base: float, share: float = TOP_SHARE) -> float:
    """The expected gain of a top-K selection at this sigma: the mean of the best `share` of the
    candidates (at least one) minus the base."""
    top = sorted(scores, reverse=True)[: max(1, math.ceil(share * len(scores)))]
    return sum(top) / len(top) - base


def point(sigma: float, scores: Sequence[float], base: float, collapse: float) -> Point:
    above = sum(s > base for s in scores)
    return Point(
        sigma=sigma,
        n=len(scores),
        above_base=above,
        density=above / len(scores),
        density_ci95=tuple(wilson(above, len(scores))),
        mean=sum(scores) / len(scores),
        median=median(scores),
        best=max(scores),
        topk_gain=topk_gain(scores, base),
        collapsed=collapsed(scores, base, collapse),
    )


def curve(
    grid: Sequence[float], per_sigma: int, scores: Mapping[int, float], base: float, collapse: float
) -> list[Point]:
    """The walk so far: each grid point in ascending order whose `per_sigma` candidates are all scored
    (`scores` by candidate index), up to and including the first that collapsed."""
    points: list[Point] = []
    for g, sigma in enumerate(grid):
        idx = indices(g, per_sigma)
        if any(i not in scores for i in idx):
            break
        points.append(point(sigma, [scores[i] for i in idx], base, collapse))
        if points[-1].collapsed:
            break
    return points


def walk_over(points: Sequence[Point], grid: Sequence[float]) -> bool:
    """Whether the pilot is done: the last point walked collapsed, or the whole grid was walked."""
    return bool(points) and (points[-1].collapsed or len(points) == len(grid))


def choose(points: Sequence[Point], rule: str, keep: int = 1) -> tuple[float, ...]:
    """The sigma (or the `keep` sigmas, ascending) of the best points that did not collapse.

    `density` ranks by density, then the top-K gain; `topk` by the top-K gain, then density; a tie
    that remains goes to the smaller sigma (closer to the base, away from the destructive side).
    When every point walked collapsed (the smallest sigma too), the smallest sigma is kept."""
    if rule not in RULES:
        raise ValueError(f"unknown pilot rule {rule!r}; known: {', '.join(RULES)}")
    if not points:
        raise ValueError("the pilot has no grid point to choose from")
    alive = [p for p in points if not p.collapsed] or [points[0]]

    def key(p: Point) -> tuple[float, float, float]:
        first, second = (p.density, p.topk_gain) if rule == "density" else (p.topk_gain, p.density)
        return (-first, -second, p.sigma)

    return tuple(sorted(p.sigma for p in sorted(alive, key=key)[:keep]))


def record(
    *,
    grid: Sequence[float],
    per_sigma: int,
    rule: str,
    keep: int,
    collapse: float,
    base: float,
    points: Sequence[Point],
    chosen: Sequence[float],
) -> dict[str, Any]:
    """What a run keeps of its pilot (calibration.json and the store): the settings, the curve, the choice."""
    stopped = next((p.sigma for p in points if p.collapsed), None)
    note = ""
    if all(p.collapsed for p in points):
        note = "every sigma tried collapsed, the smallest too: it is kept; give a smaller --pilot-grid"
    return {
        "version": RECORD_VERSION,
        "rule": rule,
        "keep": keep,
        "per_sigma": per_sigma,
        "collapse": collapse,
        "top_share": TOP_SHARE,
        "grid": list(grid),
        "tried": [p.sigma for p in points],
        "collapsed_at": stopped,
        "pilot_size": len(points) * per_sigma,
        "base": base,
        "points": [p.to_dict() for p in points],
        "chosen": list(chosen),
        "note": note,
    }
