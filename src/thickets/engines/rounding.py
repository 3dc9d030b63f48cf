"""What rounding to half precision leaves of a perturbation, measured before a bf16/fp16 run starts.

A dense expert in bfloat16 or float16 is the base plus its delta, added in float32 and rounded once
to the weight's dtype: an entry whose delta is below half a unit in the last place of its weight is
rounded away. On SmolLM2-135M in bfloat16 most of a sigma-1e-4 perturbation is lost, and nothing in
the scores says so. This measures it on a sample of each tensor (its first `sample` entries, read
from the weights files, cast to the run's dtype) with candidate 0's noise at each sigma, per tensor
group (a parameter name with its layer numbers as `*`):

- `changed`: the share of entries whose weight moved at all;
- `kept`: the share of the delta's energy the rounded weight carries, <applied, delta> / <delta, delta>.

A low-rank expert of noise version 3 is applied unmerged, in float32 (engines/lowrank_sites.py): it
keeps all of its delta, so there is nothing to measure.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thickets.models import meta_model
from thickets.noise import PerturbationSpec, noise_factor, standard_noise, tensor_scale, unmerged

#: entries of each tensor the measurement reads (its first ones): enough for a share to +-0.5%
SAMPLE = 1 << 16
#: below this share of a group's delta energy kept, a run is warned
WARN_BELOW = 0.5
HALF = ("bfloat16", "float16")


def group_of(name: str) -> str:
    """A parameter name with its layer (and expert) numbers as `*`: one group for every layer's copy."""
    return re.sub(r"\.\d+\.", ".*.", re.sub(r"\.\d+\.", ".*.", name))


def _samples(folder: Path, keeps: Any, sample: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{name: (shape, the first `sample` entries as a flat torch tensor)} of every tensor the filter keeps.
    A stored name the loaded model does not give (a checkpoint transformers renames as it loads, as
    Qwen2-VL's) is left out: its noise and its filter go by the loaded name, which this cannot know."""
    from safetensors import safe_open

    loaded = {n for n, _ in meta_model(folder).named_parameters()}
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (safe_open has keys(), no __iter__)
                if name not in loaded or not keeps(name):
                    continue
                piece = f.get_slice(name)
                shape = tuple(int(d) for d in piece.get_shape())
                if not shape:
                    continue
                row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
                rows = max(1, min(shape[0], -(-sample // row)))
                out[name] = (shape, piece[:rows].reshape(-1)[:sample])
    return out


def rounding_survival(
    folder: Path, specs: Sequence[PerturbationSpec], dtype: str, sample: int = SAMPLE
) -> list[dict[str, Any]]:
    """Per spec (one per sigma) and tensor group: the shares of its perturbation that rounding to `dtype`
    leaves (`changed`, `kept`), over the first `sample` entries of each tensor of the group."""
    import torch

    target = getattr(torch, dtype)
    tensors = _samples(folder, specs[0].filter.keeps, sample) if specs else {}
    rows = []
    for spec in specs:
        moved: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # changed, n, kept, energy
        for name, (shape, flat) in tensors.items():
            weight = flat.to(target).float()
            z = torch.from_numpy(standard_noise(spec, name, shape, 0, flat.numel()).reshape(-1))
            scale = tensor_scale(flat.float().numpy()) if spec.strategy == "relative" else None  # of the sample
            delta = z * float(noise_factor(spec, scale))
            applied = (weight + delta).to(target).float() - weight
            m = moved[group_of(name)]
            m[0] += float((applied != 0).sum())
            m[1] += flat.numel()
            m[2] += float((applied.double() * delta.double()).sum())
            m[3] += float((delta.double() ** 2).sum())
        rows.append(
            {
                "sigma": spec.sigma,
                "groups": {
                    g: {"changed": c / n, "kept": (k / e if e > 0 else 1.0), "entries": int(n)}
                    for g, (c, n, k, e) in sorted(moved.items())
                },
            }
        )
    return rows


def rounding_record(folder: Path, specs: Sequence[PerturbationSpec], dtype: str) -> dict[str, Any] | None:
    """What a bf16/fp16 run records about rounding (None in float32, or for unmerged low-rank experts)."""
    if dtype not in HALF or not specs or unmerged(specs[0]):
        return None
    return {"dtype": dtype, "sample": SAMPLE, "sigmas": rounding_survival(folder, specs, dtype)}


def rounding_warning(record: dict[str, Any] | None) -> str | None:
    """One line where rounding leaves less than half of some group's perturbation at some sigma."""
    if not record:
        return None
    worst = min(
        ((g["kept"], row["sigma"], name) for row in record["sigmas"] for name, g in row["groups"].items()),
        default=None,
    )
    if worst is None and record.get("sigmas"):
        return (
            f"warning: in {record['dtype']}, what rounding leaves of the perturbation was not measured: the weights "
            f"files name the tensors otherwise than the loaded model (a checkpoint transformers renames as it loads)"
        )
    if worst is None or worst[0] >= WARN_BELOW:
        return None
    kept, sigma, name = worst
    return (
        f"warning: in {record['dtype']}, rounding leaves {kept:.0%} of the perturbation of {name} at sigma "
        f"{sigma:g} (`thickets analyze` shows every group); use --dtype float32, a larger sigma, or --noise "
        f"lowrank (applied unmerged, kept whole)"
    )
