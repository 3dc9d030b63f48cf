"""Write a perturbed model out as a standalone Hugging Face folder, with the recipe that rebuilds it.

The folder loads with plain transformers (no thickets needed). The recipe (base model identity,
seed, sigma, strategy, filter, noise version) is a few hundred bytes from which thickets
rebuilds the same weights from the base model: ship either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from thickets.disk import written_whole
from thickets.engines import load_engine
from thickets.errors import ThicketsError
from thickets.models import ModelIdentity, resolve
from thickets.noise import NOISE_VERSIONS, ParamFilter, PerturbationSpec
from thickets.randopt.scoring import load_run_config
from thickets.randopt.store import RunStore
from thickets.randopt.vote import rank as rank_candidates
from thickets.version import __version__

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine

RECIPE_NAME = "thickets_recipe.json"


def recipe(identity: dict[str, Any], spec: PerturbationSpec, dtype: str, **extra: Any) -> dict[str, Any]:
    return {
        "thickets_version": __version__,
        "noise_version": NOISE_VERSIONS[spec.version],
        "base_model": identity,
        "seed": spec.seed,
        "sigma": spec.sigma,
        "strategy": spec.strategy,
        "include": list(spec.filter.include),
        "exclude": list(spec.filter.exclude),
        "dtype": dtype,
        **extra,
    }


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot become a new model folder, before any model is loaded."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ThicketsError(f"output {out} already exists and is not an empty folder; choose another --out")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ThicketsError(f"output {out} cannot be made: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ThicketsError(f"output {out} cannot be made: {parent} is not writable")


def build(model: str, spec: PerturbationSpec, dtype: str = "float32") -> tuple[Any, Any, ModelIdentity]:
    """(model, tokenizer, identity) with the perturbation applied for good."""

    loaded, identity = load_engine(model, dtype=dtype)
    engine = cast("TransformersEngine", loaded)  # load_engine's default engine
    engine.perturb(spec)  # never restored: this model is the perturbed one
    return engine.model, engine.tokenizer, identity


def export_spec(model: str, spec: PerturbationSpec, out: str | Path, *, dtype: str = "float32", **extra: Any) -> Path:
    """Write base + sigma * noise(spec) as a Hugging Face folder with its recipe."""
    out = Path(out)
    _check_out(out)
    m, tok, identity = build(model, spec, dtype)
    with written_whole(out) as tmp:
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / RECIPE_NAME).write_text(json.dumps(recipe(identity.to_dict(), spec, dtype, **extra), indent=2) + "\n")
    return out


def export_candidate(run_dir: str | Path, rank: int, out: str | Path) -> Path:
    """Export the candidate at `rank` (1 = best on validation) of a run. The base model must be the one
    the run was made with (its content hash), or the export would be another model."""

    config = load_run_config(run_dir)
    with RunStore.open(run_dir, write=False) as store:
        ranked = rank_candidates(store.candidates())
        recorded = store.meta("model_identity") or {}
    if not 1 <= rank <= len(ranked):
        raise ThicketsError(f"rank must be between 1 and {len(ranked)} (the candidates in {run_dir}), got {rank}")
    _check_out(Path(out))
    identity = resolve(config.model)
    if recorded.get("sha256") and identity.sha256 != recorded["sha256"]:
        raise ThicketsError(
            f"model {config.model} has changed since run {run_dir} was made (content hash differs); "
            f"exporting would not give the run's candidate"
        )
    c = ranked[rank - 1]
    spec = config.candidate(c.idx)
    return export_spec(
        config.model,
        spec,
        out,
        dtype=config.dtype,
        run={
            "run_dir": str(Path(run_dir).resolve()),
            "rank": rank,
            "index": c.idx,
            "val_score": c.score,
            "task": config.task,
        },
    )


def spec_from_recipe(data: dict[str, Any]) -> PerturbationSpec:
    versions = {text: number for number, text in NOISE_VERSIONS.items()}
    if data.get("noise_version") not in versions:
        raise ThicketsError(
            f"recipe uses noise {data.get('noise_version')!r}; this thickets makes {', '.join(map(repr, versions))}"
        )
    return PerturbationSpec(
        seed=int(data["seed"]),
        sigma=float(data["sigma"]),
        strategy=data["strategy"],
        filter=ParamFilter(tuple(data["include"]), tuple(data["exclude"])),
        version=versions[data["noise_version"]],
    )


def rebuild(recipe_path: str | Path, model: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) rebuilt from a recipe; the base's content hash must match the recorded one."""
    data = json.loads(Path(recipe_path).read_text())

    base = data["base_model"]
    name = model or base["name"]
    identity = resolve(name)
    if identity.sha256 != base["sha256"]:
        raise ThicketsError(f"base model {name} is not the one the recipe was made from (content hash differs)")
    m, tok, _ = build(name, spec_from_recipe(data), data.get("dtype", "float32"))
    return m, tok
