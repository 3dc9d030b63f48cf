"""The toy experiment's outputs: results.json, a summary table, and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.toy.signals import CONTEXT, LENGTH, X


def group(cell: dict[str, Any]) -> str:
    """none / single, target in its family / single, target outside / mixed."""
    if cell["regime"] == "mixed":
        return "mixed"
    if cell["regime"].startswith("none/"):
        return "none"
    return "single, in family" if cell["in_family"] else "single, outside"


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per group: mean density (beats the base), density with the margin, best and top-K error over base."""
    rows: list[dict[str, Any]] = []
    for name in ("none", "single, in family", "single, outside", "mixed"):
        cells = [c for c in result["cells"] if group(c) == name]
        if not cells:
            continue
        rows.append(
            {
                "group": name,
                "cells": len(cells),
                "density": float(np.mean([c["density"] for c in cells])),
                "density_margin": float(np.mean([c["density_margin"] for c in cells])),
                "best_over_base": float(np.median([c["best_mse"] / c["base_mse"] for c in cells])),
                "topk_over_base": float(np.median([c["topk_mse"] / c["base_mse"] for c in cells])),
            }
        )
    return rows


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """results.json and the PNG figures in `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["summary"] = summary(result)
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
    grid = np.zeros((len(regimes), len(targets)))
    for c in result["cells"]:
        grid[regimes.index(c["regime"]), targets.index(c["target"])] = c["density_margin"]
    fig, ax = plt.subplots(figsize=(0.9 * len(targets) + 3, 0.45 * len(regimes) + 2))
    im = ax.imshow(grid, vmin=0, vmax=max(0.05, grid.max()), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=40, ha="right")
    ax.set_yticks(range(len(regimes)), regimes)
    for i in range(len(regimes)):
        for j in range(len(targets)):
            ax.text(
                j,
                i,
                f"{grid[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if grid[i, j] < 0.6 * grid.max() else "black",
            )
    margin = result["config"]["margin"]
    ax.set_title(f"share of perturbations at least {margin:.0%} below the base's rollout error")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return save(fig, path)


def sigma_sweep(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    regimes = list(dict.fromkeys(c["regime"] for c in result["cells"]))
    for regime in regimes:
        cells = [c for c in result["cells"] if c["regime"] == regime]
        sigmas = [s["sigma"] for s in cells[0]["sweep"]]
        dens = [np.mean([c["sweep"][i]["density_margin"] for c in cells]) for i in range(len(sigmas))]
        ax.plot(sigmas, dens, marker="o", label=regime, ls="-" if regime == "mixed" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("improving share (mean over targets)")
    ax.set_title("density of improving perturbations vs sigma")
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
