"""Where a low-rank expert's change enters the model: the one map that applying an expert, population
batches and the exported adapter all read, so none of them can skip a matrix another one moves.

A low-rank expert (noise version 3 on) is the base model plus its LoRA adapter applied unmerged: each
kept matrix's module adds sigma / sqrt(R) * (x @ B) @ A.T to its output. A module can carry that only if
its output is a linear function of its weight that we can follow: `nn.Linear`, transformers' `Conv1D`
(GPT-2; its weight is stored [in, out]) and `nn.Embedding` called with token ids (Gemma's scaled
embedding too). Anything else (an MoE's 3-D expert weights and its router, OPT's learned position
embedding, which is called with the attention mask) is refused, naming the tensors, before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from thickets.errors import ThicketsError
from thickets.noise import PerturbationSpec, matrix_shape


@dataclass(frozen=True)
class Site:
    """One module that carries the change of one kept matrix (a tied head and its embedding: two sites)."""

    name: str  #: the canonical parameter name
    module: torch.nn.Module
    weight: torch.Tensor  #: the module's weight: the base tensor, never written
    kind: str  #: "linear" (out = x @ W.T), "conv1d" (out = x @ W) or "embedding" (out = W[ids] * embed_scale)
    embed_scale: float = 1.0


def adapter_scale(spec: PerturbationSpec) -> np.float32:
    """sigma / sqrt(R) as the adapter holds it: float32(1 / sqrt(R)) * float32(sigma), folded into A."""
    return np.float32(1 / np.sqrt(spec.rank)) * np.float32(spec.sigma)


def _kind(module: torch.nn.Module) -> tuple[str, float] | None:
    if isinstance(module, torch.nn.Linear):
        return "linear", 1.0
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return "conv1d", 1.0
    if isinstance(module, torch.nn.Embedding):
        if type(module).forward is torch.nn.Embedding.forward:
            return "embedding", 1.0
        if hasattr(module, "embed_scale"):  # Gemma: forward(ids) = the embedding times embed_scale
            return "embedding", float(getattr(module, "embed_scale"))  # noqa: B009  # a tensor or a number
    return None


def lowrank_sites(model: Any, params: Mapping[str, torch.Tensor], keeps: Callable[[str], bool]) -> list[Site]:
    """Every site of every matrix `keeps` selects; a matrix no site covers is refused in one line."""
    names = {id(p): n for n, p in params.items()}
    sites, covered = [], set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        name = names.get(id(weight))
        if name is None or not keeps(name) or matrix_shape(weight.shape) is None:
            continue
        kind = _kind(module)
        if kind is not None:
            sites.append(Site(name, module, weight, *kind))
            covered.add(name)
    missing = [n for n, p in params.items() if keeps(n) and matrix_shape(p.shape) is not None and n not in covered]
    if missing:
        raise ThicketsError(uncovered_message(missing, model))
    return sites


def uncovered_message(missing: Iterable[str], model: Any) -> str:
    missing = sorted(missing)
    owners = sorted({_owner(model, n) for n in missing})
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"a low-rank expert cannot move {shown} ({', '.join(owners)}: not a Linear, Conv1D or token embedding, "
        f"so no adapter can carry it); leave them out with --exclude, or use --noise gaussian"
    )


def _owner(model: Any, name: str) -> str:
    path = name.rpartition(".")[0]
    try:
        return type(model.get_submodule(path)).__name__
    except AttributeError:
        return "?"


def check_sites(folder: Any, keeps: Callable[[str], bool]) -> None:
    """lowrank_sites on the model of a folder built on the meta device (no weights read, nothing
    allocated): the refusal before a run folder is written."""
    from thickets.models import meta_model

    model = meta_model(folder)
    lowrank_sites(model, dict(model.named_parameters(remove_duplicate=True)), keeps)
