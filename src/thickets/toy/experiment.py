"""`thickets toy`: the paper's mechanism experiment on 1D signals, small enough for a laptop CPU.

A ReLU MLP reads the last CONTEXT values of a signal and predicts the next; rolled out on its
own predictions for ROLLOUT steps, its score is the mean squared error against the true signal.
Each model (unpretrained, pretrained on one family, pretrained on all six) is post-trained by
RandOpt on each target (one fixed signal, or a whole family): N perturbations with the
project's own noise, the fraction that improve on the base, the best one, and the average of
the top K rollouts. All N candidates run at once as one batched matrix product per layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from thickets.noise import PerturbationSpec, candidate_seed, standard_noise
from thickets.progress import bar
from thickets.toy.config import ToyConfig
from thickets.toy.signals import CONTEXT, FAMILIES, LENGTH, ROLLOUT, SPECIFIC, SPECIFIC_FAMILY, sample

INITS = ("xavier", "kaiming", "orthogonal")
REGIMES: dict[str, tuple[str, ...]] = {  # name -> families pretrained on (empty: none, just the init)
    **{f"none/{init}": () for init in INITS},
    "single/line": ("line",),
    "single/sinusoid": ("sinusoid",),
    "single/square": ("square",),
    "mixed": tuple(FAMILIES),
}
TARGETS: tuple[str, ...] = (*SPECIFIC, *(f"family/{f}" for f in FAMILIES))
CLAMP = 10.0  # a diverging rollout is clipped, so its error stays finite and comparable


def _layer_shapes(cfg: ToyConfig) -> list[tuple[int, int]]:
    dims = [CONTEXT] + [cfg.width] * (cfg.depth - 1) + [1]
    return list(zip(dims[1:], dims[:-1]))  # (out, in)


def n_params(cfg: ToyConfig) -> int:
    return sum(o * i + o for o, i in _layer_shapes(cfg))


def init_params(cfg: ToyConfig, init: str, seed: int) -> torch.Tensor:
    """A flat parameter vector: for each layer W [out, in] then b [out]; biases zero."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for out, inp in _layer_shapes(cfg):
        w = torch.empty(out, inp)
        if init == "xavier":
            bound = math.sqrt(6 / (inp + out))
            w.uniform_(-bound, bound, generator=g)
        elif init == "kaiming":
            w.normal_(0, math.sqrt(2 / inp), generator=g)
        elif init == "orthogonal":
            a = torch.randn(max(out, inp), min(out, inp), generator=g)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))
            w = q if out >= inp else q.T
            w = w[:out, :inp].contiguous()
        else:
            raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
        parts += [w.reshape(-1), torch.zeros(out)]
    return torch.cat(parts)


def _unflatten(cfg: ToyConfig, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[N, P] -> per layer (W [N, out, in], b [N, 1, out])."""
    layers, pos = [], 0
    for out, inp in _layer_shapes(cfg):
        w = flat[:, pos : pos + out * inp].reshape(-1, out, inp)
        pos += out * inp
        b = flat[:, pos : pos + out].reshape(-1, 1, out)
        pos += out
        layers.append((w, b))
    return layers


def forward(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """x [N, S, CONTEXT] -> next value [N, S]: candidate n's weights on its own S windows."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b, h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h[..., 0]


@torch.no_grad()
def rollout(cfg: ToyConfig, flat: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """Candidates [N, P] on signals [S, LENGTH]: predictions [N, S, ROLLOUT], each fed back."""
    layers = _unflatten(cfg, flat)
    n = flat.shape[0]
    window = signals[:, :CONTEXT].expand(n, -1, -1).contiguous()
    preds = []
    for _ in range(ROLLOUT):
        nxt = forward(layers, window).clamp_(-CLAMP, CLAMP)
        preds.append(nxt)
        window = torch.cat([window[..., 1:], nxt[..., None]], -1)
    return torch.stack(preds, -1)


def mse(preds: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """[N, S, ROLLOUT] vs the true continuation -> [N] mean squared error."""
    return ((preds - signals[None, :, CONTEXT:]) ** 2).mean((1, 2))


def pretrain(cfg: ToyConfig, families: tuple[str, ...], init: str = "kaiming", seed: int = 0) -> torch.Tensor:
    """Next-value prediction on windows of random signals from the families (teacher forcing with
    a little input noise, so the rollout tolerates its own small errors; Adam, cosine schedule)."""
    flat = init_params(cfg, init, seed)
    if not families:
        return flat
    data = torch.from_numpy(sample(list(families), cfg.pretrain_signals, seed + 1))
    p = flat.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.pretrain_steps)
    g = torch.Generator().manual_seed(seed + 2)
    for _ in range(cfg.pretrain_steps):
        rows = torch.randint(0, data.shape[0], (cfg.pretrain_batch,), generator=g)
        starts = torch.randint(0, LENGTH - CONTEXT, (cfg.pretrain_batch,), generator=g)
        win = data[rows[:, None], starts[:, None] + torch.arange(CONTEXT + 1)[None, :]]
        x = win[:, :CONTEXT] + 0.01 * torch.randn(win.shape[0], CONTEXT, generator=g)
        pred = forward(_unflatten(cfg, p[None]), x[None])[0]
        loss = ((pred - win[:, CONTEXT]) ** 2).mean()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        opt.step()
        sched.step()
    return p.detach()


def standard_directions(cfg: ToyConfig, n: int) -> torch.Tensor:
    """[n, P] unit-variance noise from the project's noise streams, one stream per candidate."""
    p = n_params(cfg)
    return torch.from_numpy(
        np.stack(
            [
                # version 1, the stream the toy's recorded figures were measured with
                standard_noise(PerturbationSpec(candidate_seed(cfg.seed, i), 1.0, version=1), "toy.mlp", (p,))
                for i in range(n)
            ]
        )
    )


def target_signals(cfg: ToyConfig, target: str) -> torch.Tensor:
    if target in SPECIFIC:
        return torch.from_numpy(SPECIFIC[target][None].astype(np.float32))
    family = target.removeprefix("family/")
    if family not in FAMILIES:
        raise ValueError(f"unknown toy target {target!r}; known: {', '.join(TARGETS)}")
    return torch.from_numpy(sample([family], cfg.family_targets, 10_000 + cfg.seed))


def randopt(
    cfg: ToyConfig, base: torch.Tensor, signals: torch.Tensor, eps: torch.Tensor, sigma: float, chunk: int = 250
) -> dict[str, Any]:
    """Score base + sigma * eps[i] for every i: both densities, the best one and the top-K mean rollout."""
    base_preds = rollout(cfg, base[None], signals)
    base_mse = float(mse(base_preds, signals)[0])
    errs, preds = [], []
    for lo in range(0, eps.shape[0], chunk):
        p = rollout(cfg, base[None] + sigma * eps[lo : lo + chunk], signals)
        errs.append(mse(p, signals))
        preds.append(p)
    err = torch.cat(errs)
    pred = torch.cat(preds)
    order = torch.argsort(err)
    top = order[: cfg.top_k]
    top_mean = pred[top].mean(0, keepdim=True)
    return {
        "sigma": sigma,
        "base_mse": base_mse,
        "density": float((err < base_mse).float().mean()),
        "density_gain": float((err <= base_mse / cfg.gain).float().mean()),
        "density_level": float((err <= cfg.level).float().mean()),
        "best_mse": float(err[order[0]]),
        "topk_mse": float(mse(top_mean, signals)[0]),
        "median_mse": float(err.median()),
        "_err": err,
        "_pred": pred,
        "_base_pred": base_preds[0],
        "_top": top,
    }


def best_sigma(sweep: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sigma a cell is reported at: the most perturbations with a substantial gain, then the best one
    (a cell where none gains substantially is reported where its best perturbation is)."""
    return max(sweep, key=lambda r: (r["density_gain"], -r["best_mse"]))


def regimes_for(target: str, regimes: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The regimes a target is searched around: with the mixed model, for a specific signal, the same
    pretraining without the signal's own family ("mixed/held-out"), so that gains on a family never
    seen in pretraining are measured too."""
    family = SPECIFIC_FAMILY.get(target)
    if family is None or "mixed" not in regimes:
        return regimes
    return {**regimes, "mixed/held-out": tuple(f for f in regimes["mixed"] if f != family)}


def run(
    cfg: ToyConfig = ToyConfig(),
    regimes: dict[str, tuple[str, ...]] | None = None,
    targets: tuple[str, ...] = TARGETS,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole grid: every regime x target, over the sigma grid, each cell at its best sigma."""
    regimes = REGIMES if regimes is None else regimes
    t0 = time.perf_counter()
    eps = standard_directions(cfg, cfg.population)
    plan = [(name, families, target) for target in targets for name, families in regimes_for(target, regimes).items()]
    needed = list(dict.fromkeys((_init(name), families) for name, families, _ in plan))
    models: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
    cells, examples = [], {}
    with bar("toy: pretrain", len(needed), progress) as update:
        for init, families in needed:
            models[init, families] = pretrain(cfg, families, init, cfg.seed)
            update()
    with bar("toy: randopt", len(plan), progress) as update:
        for name, families, target in plan:
            signals = target_signals(cfg, target)
            sweep = [randopt(cfg, models[_init(name), families], signals, eps, s) for s in cfg.sigmas]
            main = best_sigma(sweep)
            family = target.removeprefix("family/") if target.startswith("family/") else SPECIFIC_FAMILY.get(target)
            cell = {
                "regime": name,
                "target": target,
                "pretrained_on": list(families),
                "in_family": family in families,
                **{k: v for k, v in main.items() if not k.startswith("_")},
                "sweep": [{k: v for k, v in s.items() if not k.startswith("_")} for s in sweep],
            }
            cells.append(cell)
            if target in SPECIFIC:  # kept for the rollout figures
                examples[(name, target)] = (signals[0], main)
            update(gain=f"{main['best_mse'] / max(main['base_mse'], 1e-12):.3f}")
    return {"config": asdict(cfg), "cells": cells, "seconds": time.perf_counter() - t0, "_examples": examples}


def _init(regime: str) -> str:
    return regime.split("/")[1] if regime.startswith("none/") else "kaiming"


__all__ = ["REGIMES", "TARGETS", "ToyConfig", "replace", "run"]
