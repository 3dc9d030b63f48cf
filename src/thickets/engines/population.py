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


class PopulationBatch:
    """Hooks that make row r of every forward answer as expert `experts[group of r]` would."""

    def __init__(self, model: Any, params: dict[str, torch.Tensor], specs: Sequence[PerturbationSpec]):
        if not specs or any(s.strategy != "lowrank" for s in specs):
            raise ValueError("population batching needs low-rank experts")
        self.groups: torch.Tensor | None = None  # the expert of each row of the forward being run
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
            factors = [lowrank_factors_on(s, name, w.shape, w.device).to(w.dtype) for s in specs]
            if isinstance(module, torch.nn.Embedding):  # Gemma scales its embeddings inside the module
                hook = self._embedding_hook(factors, float(getattr(module, "embed_scale", 1.0)))
            else:
                hook = self._linear_hook(factors)
            self._handles.append(module.register_forward_hook(hook))

    def set_rows(self, groups: torch.Tensor) -> None:
        """Called by the decode loop before each forward: the expert of each of its rows (ascending)."""
        self.groups = groups

    def _segments(self, n: int) -> list[tuple[int, int, int]]:
        """(expert, first row, end row) runs of the current forward's rows."""
        if self.groups is None or self.groups.numel() != n:
            raise RuntimeError("population batch: the decode loop did not say whose rows these are")
        g = self.groups.tolist()
        out, lo = [], 0
        for i in range(1, n + 1):
            if i == n or g[i] != g[lo]:
                out.append((g[lo], lo, i))
                lo = i
        return out

    def _linear_hook(self, factors: list[LowRank]) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            for e, lo, hi in self._segments(x.shape[0]):
                f = factors[e]
                output[lo:hi] += ((x[lo:hi] @ f.b) @ f.a.T) * (f.inv_sqrt_rank * f.sigma)
            return output

        return hook

    def _embedding_hook(self, factors: list[LowRank], embed_scale: float) -> Any:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            ids = inputs[0]
            for e, lo, hi in self._segments(ids.shape[0]):
                f = factors[e]
                output[lo:hi] += (f.a[ids[lo:hi]] @ f.b.T) * (f.inv_sqrt_rank * f.sigma * embed_scale)
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
