"""The toy experiment's outputs: results.json, a summary table, and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.toy.signals import CONTEXT, LENGTH, X

GROUPS = ("none", "single, in family", "single, outside", "mixed", "mixed, family held out")


def group(cell: dict[str, Any]) -> str:
    """none / single, target in its family / single, target outside / mixed / mixed without the target's family."""
    if cell["regime"] == "mixed":
        return "mixed"
    if cell["regime"] == "mixed/held-out":
        return "mixed, family held out"
    if cell["regime"].startswith("none/"):
        return "none"
    return "single, in family" if cell["in_family"] else "single, outside"


def over_base(row: dict[str, Any], key: str, base: float) -> float:
    """An error of a cell (or of one point of its sweep) over its base's (a zero base counts as 1e-12)."""
    return float(row[key]) / max(base, 1e-12)


def _ratios(cells: list[dict[str, Any]], key: str) -> list[float]:
    return [over_base(c, key, c["base_mse"]) for c in cells]


def summary(result: dict[str, Any], specific_only: bool = False) -> list[dict[str, Any]]:
    """Per group: mean share beating the base, mean share with a substantial gain, median best and top-K
    error over the base's (each cell at its own best sigma)."""
    rows: list[dict[str, Any]] = []
    for name in GROUPS:
        cells = [c for c in result["cells"] if group(c) == name and not (specific_only and _family(c))]
        if not cells:
            continue
        rows.append(
            {
                "group": name,
                "cells": len(cells),
                "density": float(np.mean([c["density"] for c in cells])),
                "density_gain": float(np.mean([c["density_gain"] for c in cells])),
                "density_level": float(np.mean([c["density_level"] for c in cells])),
                "best_over_base": float(np.median(_ratios(cells, "best_mse"))),
                "topk_over_base": float(np.median(_ratios(cells, "topk_mse"))),
            }
        )
    return rows


def specific_cells(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per regime and specific target (one fixed signal), in the summary's fields plus sigma."""
    return [
        {
            "regime": c["regime"],
            "target": c["target"],
            "sigma": c["sigma"],
            "base_mse": c["base_mse"],
            "best_mse": c["best_mse"],
            "density": c["density"],
            "density_gain": c["density_gain"],
            "density_level": c["density_level"],
            "best_over_base": over_base(c, "best_mse", c["base_mse"]),
            "topk_over_base": over_base(c, "topk_mse", c["base_mse"]),
        }
        for c in result["cells"]
        if not _family(c)
    ]


def _family(cell: dict[str, Any]) -> bool:
    return bool(cell["target"].startswith("family/"))


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """results.json and the PNG figures in `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["summary"] = summary(result)
    public["summary_specific"] = summary(result, specific_only=True)
    (out / "results.json").write_text(json.dumps(public, indent=2) + "\n")
    return [
        out / "results.json",
        density_heatmap(result, out / "density.png"),
        sigma_sweep(result, out / "sigma_sweep.png"),
        *rollout_figures(result, out),
    ]


def density_heatmap(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    regimes = list(dict.fromkeys(c["regime"] for c in result["cells"]))
    targets = list(dict.fromkeys(c["target"] for c in result["cells"]))
    grid = np.full((len(regimes), len(targets)), np.nan)  # held-out cells exist for specific targets only
    for c in result["cells"]:
        grid[regimes.index(c["regime"]), targets.index(c["target"])] = c["density_gain"]
    fig, ax = plt.subplots(figsize=(0.9 * len(targets) + 3, 0.45 * len(regimes) + 2))
    top = max(0.05, float(np.nanmax(grid)))
    im = ax.imshow(grid, vmin=0, vmax=top, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=40, ha="right")
    ax.set_yticks(range(len(regimes)), regimes)
    for i in range(len(regimes)):
        for j in range(len(targets)):
            if np.isnan(grid[i, j]):
                continue
            ax.text(
                j,
                i,
                f"{grid[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if grid[i, j] < 0.6 * top else "black",
            )
    gain = result["config"]["gain"]
    ax.set_title(f"share of perturbations dividing the base's rollout error by {gain:g} or more (best sigma)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return save(fig, path)


def sigma_sweep(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    regimes = list(dict.fromkeys(c["regime"] for c in result["cells"]))
    for regime in regimes:
        cells = [c for c in result["cells"] if c["regime"] == regime]
        sigmas = [s["sigma"] for s in cells[0]["sweep"]]
        best = [
            np.median([over_base(c["sweep"][i], "best_mse", c["base_mse"]) for c in cells]) for i in range(len(sigmas))
        ]
        ax.plot(sigmas, best, marker="o", label=regime, ls="-" if regime.startswith("mixed") else "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("best / base error (median over targets)")
    ax.set_title("the best perturbation's gain vs sigma")
    ax.legend(fontsize=7)
    return save(fig, path)


def rollout_figures(result: dict[str, Any], out: Path, n_random: int = 12) -> list[Path]:
    """For each specific target: per regime, the base, random perturbations and the top-K rollouts."""
    plt = pyplot()
    examples = result.get("_examples", {})
    regimes = list(dict.fromkeys(r for r, _ in examples))
    targets = [t for t in dict.fromkeys(t for _, t in examples) if not t.startswith("family/")]
    paths: list[Path] = []
    for target in targets:
        cols = min(4, len(regimes))
        rows = -(-len(regimes) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), sharey=True, squeeze=False)
        for ax in axes.flat[len(regimes) :]:
            ax.axis("off")
        for ax, regime in zip(axes.flat, regimes):
            signal, main = examples[(regime, target)]
            t_roll = X[CONTEXT:LENGTH]
            ax.plot(X, signal.numpy(), color="black", lw=2, label="target")
            for i in range(min(n_random, main["_pred"].shape[0])):
                ax.plot(t_roll, main["_pred"][i, 0].numpy(), color="0.7", lw=0.6)
            ax.plot(t_roll, main["_base_pred"][0].numpy(), color="tab:blue", lw=1.5, label="base")
            for i in main["_top"].tolist():
                ax.plot(t_roll, main["_pred"][i, 0].numpy(), color="tab:orange", lw=0.6, alpha=0.7)
            ax.plot(
                t_roll, main["_pred"][main["_top"]][:, 0].mean(0).numpy(), color="tab:red", lw=1.5, label="top-K mean"
            )
            ax.set_ylim(-2.5, 2.5)
            ax.set_title(f"{regime}\nbase {main['base_mse']:.3f} top-K {main['topk_mse']:.3f}", fontsize=8)
        axes[0][0].legend(fontsize=6, loc="lower left")
        fig.suptitle(f"target: {target} (grey: random perturbations, orange: top K)", fontsize=9)
        paths.append(save(fig, out / f"rollouts_{target.replace('(', '').replace(')', '').replace(' ', '_')}.png"))
    return paths
