"""Does the selection transfer? A random sample of candidates, besides the top K, answers the test split
(stored like the top K's answers, so nothing is generated twice), and the run learns how its validation
scores predict test accuracy: rank correlations with bootstrap intervals, the test accuracy of the top 1,
the top K and a random candidate, and the winner's curse, how much of the top-1's validation gain is
expected to survive on new questions (from the regression of test on validation over the candidates).

Rank correlations are written here with numpy (Spearman: Pearson's r of average ranks; Kendall's tau-b):
scipy, which has them, is no dependency of thickets and would add tens of megabytes for two statistics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thickets.disk import write_whole
from thickets.errors import ThicketsError
from thickets.options import SEEDS, check_bounds, option
from thickets.progress import bar
from thickets.randopt.config import MAX_SPLIT
from thickets.randopt.ensemble import StoredAnswers
from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import task_for
from thickets.randopt.store import BASE, RunStore, Summary, candidate_model
from thickets.randopt.vote import fully_scored, rank
from thickets.tasks.splits import make_splits

TRANSFER_FILE = "transfer.json"
BOOTSTRAP = 2000


@dataclass(frozen=True)
class TransferConfig:
    """`thickets transfer`'s settings: one field per flag."""

    run_dir: str = option(..., "the run folder")
    sample: int = option(
        16, "candidates drawn at random, besides the top K, that answer the test split", bounds=(1, 100_000)
    )
    top_k: int = option(5, "the top K by validation, which answer the test split too", bounds=(1, 10_000))
    test_size: int = option(100, "held-out test questions", bounds=(1, MAX_SPLIT))
    seed: int = option(0, "seed of the random sample", bounds=SEEDS)

    def __post_init__(self) -> None:
        check_bounds(self)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b: concordant minus discordant pairs, over the pairs untied in each variable."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), 1)
    s = float((dx * dy)[upper].sum())
    tx, ty = float((dx[upper] != 0).sum()), float((dy[upper] != 0).sum())
    return s / math.sqrt(tx * ty) if tx and ty else float("nan")


def _interval(stat: Any, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[float]:
    """A 95% bootstrap interval of stat(x, y) over resamples of the candidates."""
    values = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(x), len(x))
        v = stat(x[i], y[i])
        if math.isfinite(v):
            values.append(v)
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def transfer_stats(
    val: list[float],
    test: list[float],
    drawn: list[bool],
    top_k: int,
    base_val: float,
    base_test: float,
    seed: int = 0,
) -> dict[str, Any]:
    """What validation says about test, over candidates with both scores (`drawn`: which of them are the
    random sample, whose mean is what a candidate picked at random scores); `val` best first is not assumed."""
    x, y = np.asarray(val, dtype=float), np.asarray(test, dtype=float)
    sample = y[np.asarray(drawn, dtype=bool)]
    rng = np.random.default_rng(seed)
    order = np.argsort(-x, kind="mergesort")
    slope = float(np.polyfit(x, y, 1)[0]) if x.std() > 0 else float("nan")
    top1_val = float(x[order[0]])
    expected_top1 = float(y.mean() + slope * (top1_val - x.mean())) if math.isfinite(slope) else float("nan")
    val_gain = top1_val - base_val
    return {
        "candidates": len(x),
        "spearman": spearman(x, y),
        "spearman_ci95": _interval(spearman, x, y, rng),
        "kendall": kendall(x, y),
        "kendall_ci95": _interval(kendall, x, y, rng),
        "slope": slope,
        "top1_test": float(y[order[0]]),
        "topk_test_mean": float(y[order[:top_k]].mean()),
        "random_test": float(sample.mean()) if len(sample) else float("nan"),
        "base_test": base_test,
        "top1_val_gain": val_gain,
        "top1_expected_test_gain": expected_top1 - base_test,
        # the winner's curse: the share of the top-1's validation gain expected on new questions
        "surviving_share": (expected_top1 - base_test) / val_gain if val_gain > 0 else float("nan"),
    }


def transfer(cfg: TransferConfig, *, progress: bool = True) -> dict[str, Any]:
    """Score the top K and a random sample on the test split (what is stored is not generated again), then
    the statistics; written to RUN/transfer.json and returned."""
    config = load_run_config(cfg.run_dir)
    task = task_for(config)
    _, test = make_splits(task, config.split_seed, config.val_size, cfg.test_size, scheme=config.split_scheme)
    with RunStore.open(cfg.run_dir, write=False) as store:
        ranked = fully_scored(rank(store.candidates()))
        base_val = Summary.of(list(store.scores(BASE, "val").values())).score
    if len(ranked) < 3:
        raise ThicketsError(f"{cfg.run_dir} has {len(ranked)} fully scored candidates; transfer needs 3 or more")
    top, rest = ranked[: cfg.top_k], ranked[cfg.top_k :]
    rng = np.random.default_rng(cfg.seed)
    drawn = [rest[i] for i in sorted(rng.choice(len(rest), min(cfg.sample, len(rest)), replace=False))]
    chosen = top + drawn
    positions = list(range(len(test)))
    with RunStore.open(cfg.run_dir) as store, bar("transfer: test answers", len(chosen) + 1, progress) as update:
        answers = StoredAnswers(store, config, task, test, None)
        base = answers.of(BASE, None, positions)
        update()
        tests = []
        for c in chosen:
            scores = answers.of(candidate_model(c.idx), config.candidate(c.idx), positions)
            tests.append(Summary.of(list(scores.values())).accuracy)
            update()
    base_test = Summary.of(list(base.values())).accuracy
    report = {
        "test_size": len(test),
        "top_k": cfg.top_k,
        "sampled": [c.idx for c in drawn],
        "points": [
            {"idx": c.idx, "val": c.score, "test": t, "top": i < len(top)}
            for i, (c, t) in enumerate(zip(chosen, tests))
        ],
        "base_val": base_val,
        **transfer_stats(
            [c.score for c in chosen],
            tests,
            [i >= len(top) for i in range(len(chosen))],
            min(cfg.top_k, len(top)),
            base_val,
            base_test,
            cfg.seed,
        ),
    }
    write_whole(Path(cfg.run_dir) / TRANSFER_FILE, json.dumps(report, indent=2) + "\n")
    return report


def read_transfer(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / TRANSFER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def plot_transfer(report: dict[str, Any], path: Path) -> Path:
    from thickets.analysis.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for top, colour, label in ((False, "C0", "random sample"), (True, "C3", f"top {report['top_k']}")):
        pts = [(p["val"], p["test"]) for p in report["points"] if p["top"] == top]
        if pts:
            ax.scatter(*zip(*pts), color=colour, label=label, alpha=0.8)
    ax.axhline(report["base_test"], color="black", ls="--", lw=1, label="base (test)")
    ax.axvline(report["base_val"], color="gray", ls=":", lw=1, label="base (validation)")
    ax.set_xlabel("validation score")
    ax.set_ylabel(f"test accuracy ({report['test_size']} questions)")
    ax.set_title(f"Spearman {report['spearman']:.2f}, Kendall {report['kendall']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def transfer_lines(report: dict[str, Any]) -> list[str]:
    """What a person reads: the correlations, the top-1/top-K/random test scores and the winner's curse."""
    lo, hi = report["spearman_ci95"]
    klo, khi = report["kendall_ci95"]
    return [
        f"validation against test over {report['candidates']} candidates ({report['test_size']} questions): "
        f"Spearman {report['spearman']:.2f} [{lo:.2f}, {hi:.2f}], "
        f"Kendall {report['kendall']:.2f} [{klo:.2f}, {khi:.2f}]",
        f"test accuracy: top-1 {report['top1_test']:.1%}, top-{report['top_k']} each "
        f"{report['topk_test_mean']:.1%} on average, a random candidate {report['random_test']:.1%} "
        f"(the mean of the {len(report['sampled'])} drawn), "
        f"the base {report['base_test']:.1%}",
        f"winner's curse: the top-1 gained {report['top1_val_gain']:+.3f} on validation; the regression of test on "
        f"validation expects {report['top1_expected_test_gain']:+.3f} on test "
        f"({report['surviving_share']:.0%} of it survives)",
    ]
