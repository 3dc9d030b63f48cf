"""`thickets analyze`: is there a thicket around this model for this task? Read from a run folder.

Everything comes from the store (scores, sigmas, seeds) and, for the perturbation map, from
the noise streams themselves: a candidate's direction is regenerated chunk by chunk from its
seed and projected on two fixed random directions as it streams by, so no full-size noise
vector is ever held, let alone N of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.analysis.population import plot_population, population_curve, what_to_run
from thickets.analysis.reliability import split_half
from thickets.analysis.reports import html_report
from thickets.analysis.transfer import plot_transfer, read_transfer
from thickets.errors import ThicketsError
from thickets.models import parameter_shapes, resolve
from thickets.noise import CHUNK, PerturbationSpec, standard_noise
from thickets.progress import bar
from thickets.randopt.config import SearchConfig
from thickets.randopt.pilot import wilson
from thickets.randopt.store import BASE, Candidate, RunStore, Summary, candidate_model
from thickets.randopt.vote import rank, rank_on_task, vote_accuracy
from thickets.tasks import Score
from thickets.tasks.multi import task_names, task_of

PROJECTION_SEED = 20260  # the two fixed directions of the perturbation map


@dataclass(frozen=True)
class RunScores:
    """What the analysis reads from a run folder."""

    base: float
    idx: np.ndarray
    seed: np.ndarray
    sigma: np.ndarray
    score: np.ndarray
    config: SearchConfig
    calibration: dict[str, Any] | None  # the pilot of a run with --sigma auto (RunStore.calibration)
    unscored: dict[str, int]  # rows without a verdict, per split (RunStore.unscored)
    rounding: dict[str, Any] | None  # bf16/fp16: what rounding leaves of each sigma's perturbation (engines/rounding)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def model(self) -> str:
        return self.config.model

    @classmethod
    def read(cls, run_dir: str | Path) -> RunScores:
        with RunStore.open(run_dir, write=False) as store:
            config = store.config
            base_scores = store.scores(BASE, "val")
            cands = [c for c in store.candidates() if c.complete]
            calibration = store.calibration()
            unscored = store.unscored()
            rounding = store.meta("rounding")
        if not base_scores or not cands:
            raise ThicketsError(f"run {run_dir} has no fully scored candidates yet (run `thickets search` first)")
        base = Summary.of(list(base_scores.values())).score
        return cls(
            base,
            np.array([c.idx for c in cands]),
            np.array([c.seed for c in cands], dtype=np.uint64),
            np.array([c.sigma for c in cands]),
            np.array([c.score for c in cands]),
            config,
            calibration,
            unscored,
            rounding,
        )


def density(r: RunScores, delta: float) -> list[dict[str, Any]]:
    """Per sigma (and all together): how many candidates beat the base, and by more than delta, with
    Wilson intervals over candidates."""
    rows: list[dict[str, Any]] = []
    for sigma in [*sorted(set(r.sigma.tolist())), None]:
        pick = np.ones_like(r.score, bool) if sigma is None else r.sigma == sigma
        s = r.score[pick]
        rows.append(
            {
                "sigma": sigma,
                "n": int(pick.sum()),
                "above_base": float((s > r.base).mean()),
                "above_base_ci95": wilson(int((s > r.base).sum()), int(pick.sum())),
                "above_base_plus_delta": float((s > r.base + delta).mean()),
                "above_base_plus_delta_ci95": wilson(int((s > r.base + delta).sum()), int(pick.sum())),
                "delta": delta,
                "mean": float(s.mean()),
                "best": float(s.max()),
                "worst": float(s.min()),
            }
        )
    return rows


def topk_curves(run_dir: str | Path, k_max: int = 20) -> dict[str, dict[str, Any]]:
    """Test accuracy of the top-K vote for K = 1.. as far as test answers are stored (from `ensemble`),
    per task: a multi-task run ranks experts by their validation score on each task, as `ensemble` does."""

    curves: dict[str, dict[str, Any]] = {}
    with RunStore.open(run_dir, write=False) as store:
        cands = rank([c for c in store.candidates() if c.complete])
        tasks = task_names(store.config.task)
        multi = len(tasks) > 1
        by_model = store.val_reward_by_task() if multi else {}
        test_ids = store.example_ids("test", BASE)
        for task in tasks:
            positions = sorted(p for p, i in test_ids.items() if not multi or task_of(i) == task)
            ranked = rank_on_task(cands, by_model, task) if multi else cands
            curve = _curve(store, ranked[:k_max], positions)
            if curve is not None:
                curves[task] = curve
    return curves


def _curve(store: RunStore, ranked: Sequence[Candidate], positions: list[int]) -> dict[str, Any] | None:
    base = store.scores(BASE, "test")
    experts: list[dict[int, Score]] = []
    for c in ranked:
        scores = store.scores(candidate_model(c.idx), "test")
        if not positions or any(p not in scores for p in positions):
            break
        experts.append({i: scores[p] for i, p in enumerate(positions)})
    if not experts:
        return None
    n = len(positions)
    acc = [vote_accuracy(experts[:k], n)[0] for k in range(1, len(experts) + 1)]
    base_acc = float(np.mean([base[p].correct for p in positions]))
    return {"k": list(range(1, len(experts) + 1)), "accuracy": acc, "base": base_acc, "n_test": n}


def projection(
    specs: Sequence[PerturbationSpec],
    names_shapes: Sequence[tuple[str, tuple[int, ...]]],
    progress: bool = True,
    scales: dict[str, float] | None = None,
) -> np.ndarray:
    """[N, 2]: each candidate's perturbation sigma * eps projected on two fixed random directions
    (scaled by 1/sqrt(parameters), so a coordinate is about sigma in size). Relative noise is
    sigma * scale * eps, each tensor's scale from `scales` (the engine's tensor_scales()).

    Chunk by chunk over every parameter: the two directions' chunk and each candidate's chunk are
    generated, multiplied and summed, then dropped. Cost: (N + 2) noise passes over the model.
    """
    if scales is None and any(s.strategy == "relative" for s in specs):
        raise ValueError("relative noise is projected with the base tensors' scales")
    out = np.zeros((len(specs), 2))
    dirs = [PerturbationSpec(PROJECTION_SEED + j, 1.0) for j in range(2)]
    sizes = {n: (int(np.prod(shape)) if shape else 1) for n, shape in names_shapes}
    total = sum(sizes.values())
    with bar("analyze: perturbation map", sum(-(-v // CHUNK) for v in sizes.values()), progress) as update:
        for name, shape in names_shapes:
            keep = [i for i, spec in enumerate(specs) if spec.filter.keeps(name)]
            for lo in range(0, sizes[name], CHUNK):
                hi = min(lo + CHUNK, sizes[name])
                d = np.stack([standard_noise(spec, name, shape, lo, hi).reshape(-1) for spec in dirs])  # [2, chunk]
                for i in keep:
                    w = scales[name] if scales is not None and specs[i].strategy == "relative" else 1.0
                    out[i] += w * (d @ standard_noise(specs[i], name, shape, lo, hi).reshape(-1))
                update()
    scaled: np.ndarray = out * np.array([s.sigma for s in specs])[:, None] / np.sqrt(total)
    return scaled


def specialisation(run_dir: str | Path) -> dict[str, Any] | None:
    """For a multi-task run: candidate x task gain over the base on validation, the task-task correlation
    of those gains, and how often a candidate improves one task while hurting another."""

    with RunStore.open(run_dir, write=False) as store:
        tasks = task_names(store.config.task)
        if len(tasks) < 2:
            return None
        by_model = store.val_reward_by_task()
        cands = [c for c in store.candidates() if c.complete]
    base = by_model[BASE]
    gains = np.array(
        [[by_model.get(candidate_model(c.idx), {}).get(t, np.nan) - base[t] for t in tasks] for c in cands]
    )
    T = len(tasks)
    corr = np.full((T, T), np.nan)
    for a in range(T):
        for b in range(T):
            x, y = gains[:, a], gains[:, b]
            if x.std() > 0 and y.std() > 0:
                corr[a, b] = float(np.corrcoef(x, y)[0, 1])
    trade = {
        f"{tasks[a]} up, {tasks[b]} down": float(((gains[:, a] > 0) & (gains[:, b] < 0)).mean())
        for a in range(T)
        for b in range(T)
        if a != b
    }
    return {
        "tasks": tasks,
        "idx": [c.idx for c in cands],
        "gains": gains.tolist(),
        "base": base,
        "correlation": corr.tolist(),
        "trade_offs": trade,
        "improve_one_hurt_another": float(((gains > 0).any(1) & (gains < 0).any(1)).mean()),
        "improve_all": float((gains > 0).all(1).mean()),
        "above_base_per_task": {t: float((gains[:, i] > 0).mean()) for i, t in enumerate(tasks)},
    }


# -- figures ---------------------------------------------------------------------------------------


def plot_histogram(r: RunScores, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sigmas = sorted(set(r.sigma.tolist()))
    bins = np.linspace(min(r.score.min(), r.base) - 1e-9, max(r.score.max(), r.base) + 1e-9, 25)
    ax.hist([r.score[r.sigma == s] for s in sigmas], bins=bins, stacked=True, label=[f"sigma {s:g}" for s in sigmas])
    ax.axvline(r.base, color="black", ls="--", label=f"base {r.base:.3f}")
    ax.set_xlabel("validation score")
    ax.set_ylabel("candidates")
    ax.set_title(f"{len(r.score)} perturbations of {r.model} on {r.task}")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_sigma_curve(r: RunScores, path: Path) -> Path:
    plt = pyplot()
    rows = [d for d in density(r, 0.0) if d["sigma"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sig = [d["sigma"] for d in rows]
    ax.plot(sig, [d["mean"] for d in rows], marker="o", label="mean")
    ax.plot(sig, [d["best"] for d in rows], marker="^", label="best")
    ax.axhline(r.base, color="black", ls="--", label="base")
    if len(sig) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("validation score")
    ax.set_title("score vs sigma")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_pilot(record: dict[str, Any], path: Path) -> Path:
    """The pilot of --sigma auto: density (with Wilson intervals) and scores against sigma, log x axis; the
    chosen sigma marked in green, a collapsed one by a dotted red line, grid points never tried as grey crosses."""
    plt = pyplot()
    pts = record["points"]
    sig = [p["sigma"] for p in pts]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5.6), sharex=True)
    dens = np.array([p["density"] for p in pts])
    ci = np.array([p["density_ci95"] for p in pts]).reshape(-1, 2)
    top.errorbar(sig, dens, yerr=[dens - ci[:, 0], ci[:, 1] - dens], marker="o", capsize=3, label="above base")
    top.set_ylabel("share above the base")
    top.set_ylim(-0.02, 1.02)
    for key, marker in (("mean", "o"), ("median", "s"), ("best", "^")):
        bottom.plot(sig, [p[key] for p in pts], marker=marker, label=key)
    bottom.axhline(record["base"], color="black", ls="--", lw=1, label=f"base {record['base']:.3f}")
    bottom.set_ylabel("validation score")
    bottom.set_xlabel("sigma")
    for ax in (top, bottom):
        for i, c in enumerate(record["chosen"]):
            ax.axvline(c, color="tab:green", lw=2, alpha=0.5, label="chosen" if ax is bottom and not i else None)
        for p in pts:
            if p["collapsed"]:
                ax.axvline(p["sigma"], color="tab:red", ls=":", lw=1, label="collapsed" if ax is bottom else None)
        ax.set_xscale("log")
    untried = [x for x in record["grid"] if x not in record["tried"]]
    if untried:
        bottom.plot(untried, [record["base"]] * len(untried), "x", color="gray", label="not tried")
    bottom.legend(fontsize=7)
    chosen = ", ".join(f"{c:g}" for c in record["chosen"])
    top.set_title(f"pilot: {record['per_sigma']} candidates per sigma; chosen {chosen} ({record['rule']} rule)")
    return save(fig, path)


def plot_topk(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (task, curve) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(
            curve["k"],
            curve["accuracy"],
            marker="o",
            color=color,
            label=f"{task}: top-K vote ({curve['n_test']} questions)",
        )
        ax.axhline(curve["base"], color=color, ls="--", lw=1, label=f"{task}: base")
    ax.set_xticks(sorted({k for c in curves.values() for k in c["k"]}))
    ax.set_xlabel("K")
    ax.set_ylabel("test accuracy")
    ax.set_title("ensemble accuracy as K grows")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_projection(r: RunScores, xy: np.ndarray, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    better = r.score > r.base
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=r.score, cmap="coolwarm", s=28, edgecolors=np.where(better, "k", "none"))
    ax.scatter([0], [0], marker="*", s=160, color="black", label="base")
    fig.colorbar(sc, ax=ax, label="validation score")
    ax.set_xlabel("random direction 1")
    ax.set_ylabel("random direction 2")
    ax.set_title("perturbations on a random 2D projection\n(outlined: above the base)")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_specialisation(spec: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    g = np.array(spec["gains"])
    order = np.argsort(-np.nanmean(g, 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    lim = max(1e-9, float(np.nanmax(np.abs(g))))
    im = axes[0].imshow(g[order].T, aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim)
    axes[0].set_yticks(range(len(spec["tasks"])), spec["tasks"])
    axes[0].set_xlabel("candidates, by mean gain")
    axes[0].set_title("gain over the base, validation")
    fig.colorbar(im, ax=axes[0], fraction=0.04)
    a, b = 0, 1
    axes[1].scatter(g[:, a], g[:, b], s=18, c="tab:purple")
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].axvline(0, color="black", lw=0.8)
    axes[1].set_xlabel(f"gain on {spec['tasks'][a]}")
    axes[1].set_ylabel(f"gain on {spec['tasks'][b]}")
    r = spec["correlation"][a][b]
    axes[1].set_title(f"correlation {r:.2f}" if r == r else "correlation undefined")
    return save(fig, path)


def analyze(
    run_dir: str | Path,
    delta: float = 0.02,
    projection_map: bool = True,
    progress: bool = True,
    harm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Figures, a summary and one self-contained report.html in the run folder."""
    run_dir = Path(run_dir)
    r = RunScores.read(run_dir)
    out = run_dir / "analysis"
    out.mkdir(exist_ok=True)
    dens = density(r, delta)
    figures = {
        "histogram": plot_histogram(r, out / "histogram.png"),
        "sigma": plot_sigma_curve(r, out / "sigma_curve.png"),
    }
    if r.calibration is not None:
        figures["pilot"] = plot_pilot(r.calibration, out / "pilot.png")
    curves = topk_curves(run_dir)
    if curves:
        figures["topk"] = plot_topk(curves, out / "topk.png")
    moved = read_transfer(run_dir)
    if moved is not None:
        figures["transfer"] = plot_transfer(moved, out / "transfer.png")
    population = population_curve(run_dir)
    if population is not None:
        figures["population"] = plot_population(population, out / "population.png")
    spec = specialisation(run_dir)
    if spec is not None:
        figures["specialisation"] = plot_specialisation(spec, out / "specialisation.png")
    if projection_map:
        specs = [r.config.candidate(int(i)) for i in r.idx]
        scales = _tensor_scales(r.config) if any(s.strategy == "relative" for s in specs) else None
        xy = projection(specs, _parameter_shapes(run_dir), progress, scales)
        figures["projection"] = plot_projection(r, xy, out / "projection.png")
    summary: dict[str, Any] = {
        "task": r.task,
        "model": r.model,
        "base": r.base,
        "candidates": len(r.score),
        "density": dens,
        "topk_curves": curves,
        "specialisation": spec,
        "calibration": r.calibration,
        "unscored": r.unscored,
        "rounding": r.rounding,
        "reliability": split_half(run_dir),
        "population_curve": population,
        "transfer": moved,
        "harm": harm,
        "population_note": what_to_run(population, run_dir) if population is not None else None,
        "figures": {k: str(v) for k, v in figures.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "report.html").write_text(html_report(summary, figures))
    summary["html"] = str(run_dir / "report.html")
    return summary


def _tensor_scales(config: SearchConfig) -> dict[str, float]:
    """The relative strategy's scale of each base tensor, as the run's engine makes them (loads the weights)."""
    from thickets.engines import load_engine

    engine, _ = load_engine(config.model, dtype=config.dtype)
    scales: dict[str, float] = engine.tensor_scales()  # type: ignore[attr-defined]  # the transformers engine's
    return scales


def _parameter_shapes(run_dir: Path) -> list[tuple[str, tuple[int, ...]]]:
    """The run's model's parameter names and shapes, without loading weights."""
    with RunStore.open(run_dir, write=False) as store:
        model = store.config.model
    return list(parameter_shapes(resolve(model)).items())
