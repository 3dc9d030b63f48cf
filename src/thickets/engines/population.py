"""Many low-rank experts in one batched forward pass over the shared base weights (EGGROLL's idea).

A low-rank expert moves each kept matrix W by sigma * A @ B.T / sqrt(R). Its rows of a batch need
not see a copy of W: x @ (W + delta).T = x @ W.T + s * (x @ B) @ A.T, so the base product is shared by
every row and each row adds its own expert's two thin products. Forward hooks on the model's Linear
and Embedding modules add them, rows grouped by expert (the decode loop keeps that order when rows
leave the batch). A tied output head reads its embedding's factors. The base weights are never
written, so nothing is restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from thickets.engines.device_noise import LowRank, lowrank_factors_on
from thickets.noise import PerturbationSpec, matrix_shape


class _Stack:
    """One weight's factors for every expert: A [M, rows, R], B [M, cols, R], scale [M, 1, 1]."""

    def __init__(self, factors: list[LowRank]):
        r = max(f.a.shape[1] for f in factors)  # experts of lower rank: zero columns, which add nothing
        self.a = torch.stack([torch.nn.functional.pad(f.a, (0, r - f.a.shape[1])) for f in factors])
        self.b = torch.stack([torch.nn.functional.pad(f.b, (0, r - f.b.shape[1])) for f in factors])
        self.scale = torch.tensor([f.inv_sqrt_rank * f.sigma for f in factors], dtype=self.a.dtype).to(self.a.device)
        self.scale = self.scale[:, None, None]


class PopulationBatch:
    """Hooks that make row r of every forward answer as expert `experts[group of r]` would."""

    def __init__(self, model: Any, params: dict[str, torch.Tensor], specs: Sequence[PerturbationSpec]):
        if not specs or any(s.strategy != "lowrank" for s in specs):
            raise ValueError("population batching needs low-rank experts")
        self.experts = len(specs)
        self._segments: list[tuple[int, int, int]] = []  # (expert, first row, end row) of the current forward
        self._equal = False  # every expert once, in order, with as many rows each: one batched product
        self._handles: list[Any] = []
        names = {id(p): n for n, p in params.items()}
        for module in model.modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                continue
            name = names.get(id(module.weight))
            if name is None or matrix_shape(module.weight.shape) is None:
                continue
            kept = [s for s in specs if s.filter.keeps(name)]
            if not kept:
                continue
            if len(kept) != len(specs):
                raise ValueError(f"experts batched together must perturb the same parameters ({name})")
            w = module.weight
            stack = _Stack([lowrank_factors_on(s, name, w.shape, w.device).to(w.dtype) for s in specs])
            if isinstance(module, torch.nn.Embedding):  # Gemma scales its embeddings inside the module
                hook = self._embedding_hook(stack, float(getattr(module, "embed_scale", 1.0)))
            else:
                hook = self._linear_hook(stack)
            self._handles.append(module.register_forward_hook(hook))

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

    def _check(self, n: int) -> None:
        if not self._segments or self._segments[-1][2] != n:
            raise RuntimeError("population batch: the decode loop did not say whose rows these are")

    def _linear_hook(self, f: _Stack) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            self._check(x.shape[0])
            if self._equal:  # [M, rows * tokens, cols] @ [M, cols, R] @ [M, R, out]
                xm = x.reshape(self.experts, -1, x.shape[-1])
                delta = torch.bmm(torch.bmm(xm, f.b), f.a.transpose(1, 2)).mul_(f.scale)
                output += delta.view(output.shape)
                return output
            for e, lo, hi in self._segments:
                output[lo:hi] += ((x[lo:hi] @ f.b[e]) @ f.a[e].T) * f.scale[e, 0, 0]
            return output

        return hook

    def _embedding_hook(self, f: _Stack, embed_scale: float) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            ids = inputs[0]
            self._check(ids.shape[0])
            for e, lo, hi in self._segments:
                output[lo:hi] += (f.a[e][ids[lo:hi]] @ f.b[e].T) * (f.scale[e, 0, 0] * embed_scale)
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
