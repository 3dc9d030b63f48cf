"""Low-rank experts applied unmerged, one or many in one batched forward pass over the shared base
weights (EGGROLL's idea).

A low-rank expert (noise version 3 on) is the base model plus its LoRA adapter, applied unmerged: the
module of each kept matrix W adds s * (x @ B) @ A.T to its output, s = sigma / sqrt(R) folded into A
(lowrank_sites.adapter_scale), the product made in float32 and added to the output in float32, rounded
once to the output's dtype (what peft does with a float32 adapter on a half-precision model). So the
whole change counts in any dtype: merged into bf16 weights, most of a small perturbation rounds away.
The base weights are never written, so nothing is restored.

Many experts share one batch: rows grouped by expert (the decode loop keeps that order when rows leave
the batch), the base product made once for all rows and each row adding its own expert's two thin
products. Which modules carry a change is lowrank_sites' one map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from thickets.engines.device_noise import lowrank_factors_on
from thickets.engines.lowrank_sites import Site, adapter_scale, lowrank_sites
from thickets.noise import PerturbationSpec


class _Stack:
    """One matrix's factors for every expert, float32: A * s [M, rows, R] and B [M, cols, R]."""

    def __init__(self, site: Site, specs: Sequence[PerturbationSpec], device: torch.device):
        shape = tuple(site.weight.shape)
        factors = [lowrank_factors_on(s, site.name, shape, device) for s in specs]
        r = max(f.a.shape[1] for f in factors)  # experts of lower rank: zero columns, which add nothing

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, r - t.shape[1]))

        self.a = torch.stack([pad(f.a) * float(adapter_scale(s)) for f, s in zip(factors, specs)])
        self.b = torch.stack([pad(f.b) for f in factors])
        if site.kind == "conv1d":  # W is [in, out]: x @ (A B^T) = (x @ A) @ B^T
            self.a, self.b = self.b, self.a
        self.embed_scale = site.embed_scale


def _add_rounded_once(output: torch.Tensor, delta: torch.Tensor) -> None:
    """output += delta, the sum made in float32 and rounded once to output's dtype."""
    if output.dtype == torch.float32:
        output += delta
    else:
        output.copy_(output.float().add_(delta))


class PopulationBatch:
    """Hooks that make row r of every forward answer as expert `experts[group of r]` would. With one
    expert, every row is that expert's and no decode loop needs to say so (any decoder, `generate`
    too)."""

    def __init__(self, model: Any, params: dict[str, torch.Tensor], specs: Sequence[PerturbationSpec]):
        if not specs or any(s.strategy != "lowrank" for s in specs):
            raise ValueError("population batching needs low-rank experts")
        self.experts = len(specs)
        self._segments: list[tuple[int, int, int]] = []  # (expert, first row, end row) of the current forward
        self._equal = False  # every expert once, in order, with as many rows each: one batched product
        self._handles: list[Any] = []
        filters = {s.filter for s in specs}
        if len(filters) > 1:
            raise ValueError("experts batched together must perturb the same parameters")
        keeps = specs[0].filter.keeps
        for site in lowrank_sites(model, params, keeps):
            stack = _Stack(site, specs, site.weight.device)
            hook = self._embedding_hook(stack) if site.kind == "embedding" else self._linear_hook(stack)
            self._handles.append(site.module.register_forward_hook(hook))

    def set_rows(self, groups: torch.Tensor) -> None:
        """Called by the decode loop before each forward: the expert of each of its rows (ascending)."""
        g = groups.tolist()
        segments, lo = [], 0
        for i in range(1, len(g) + 1):
            if i == len(g) or g[i] != g[lo]:
                segments.append((g[lo], lo, i))
                lo = i
        self._segments = segments
        sizes = {hi - lo for _, lo, hi in segments}
        self._equal = [e for e, _, _ in segments] == list(range(self.experts)) and len(sizes) == 1

    def _rows(self, n: int) -> tuple[list[tuple[int, int, int]], bool]:
        if self.experts == 1:
            return [(0, 0, n)], True
        total = self._segments[-1][2] if self._segments else 0
        if not total or n % total:
            raise RuntimeError("population batch: the decode loop did not say whose rows these are")
        if n == total:
            return self._segments, self._equal
        t = n // total  # a module fed the batch flattened row-major, [rows * tokens, ...] (OPT's MLP)
        return [(e, lo * t, hi * t) for e, lo, hi in self._segments], self._equal

    def _linear_hook(self, f: _Stack) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = inputs[0].float()
            segments, equal = self._rows(x.shape[0])
            if equal:  # [M, rows * tokens, in] @ [M, in, R] @ [M, R, out]
                xm = x.reshape(self.experts, -1, x.shape[-1])
                delta = torch.bmm(torch.bmm(xm, f.b), f.a.transpose(1, 2))
                _add_rounded_once(output, delta.view(output.shape))
                return output
            for e, lo, hi in segments:
                _add_rounded_once(output[lo:hi], (x[lo:hi] @ f.b[e]) @ f.a[e].T)
            return output

        return hook

    def _embedding_hook(self, f: _Stack) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            ids = inputs[0]
            segments, _ = self._rows(ids.shape[0])
            for e, lo, hi in segments:
                delta = f.a[e][ids[lo:hi]] @ f.b[e].T
                _add_rounded_once(output[lo:hi], delta if f.embed_scale == 1.0 else delta * f.embed_scale)
            return output

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> PopulationBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
