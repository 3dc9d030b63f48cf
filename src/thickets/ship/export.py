"""Write a perturbed model out as a standalone Hugging Face folder, with the recipe that rebuilds it.

The folder loads with plain transformers (no thickets needed). The recipe (base model identity,
seed, sigma, strategy, filter, noise version) is a few hundred bytes from which thickets
rebuilds the same weights from the base model: ship either. A low-rank expert is also written as
the LoRA adapter it is (`adapter/`, which peft loads onto the base model).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from thickets.disk import written_whole
from thickets.engines import load_engine, uses_chat_template
from thickets.errors import ThicketsError
from thickets.models import ModelIdentity, load_tokenizer, local_folder, resolve, same_model
from thickets.noise import NOISE_VERSIONS, ParamFilter, PerturbationSpec, lowrank_factors, matrix_shape
from thickets.randopt.config import SearchConfig
from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import task_for
from thickets.randopt.store import RunStore
from thickets.randopt.vote import rank as rank_candidates
from thickets.ship.portable import make_portable, prompting_of
from thickets.version import __version__

if TYPE_CHECKING:
    from thickets.engines.lowrank_sites import Site
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
        "rank": spec.rank,
        "include": list(spec.filter.include),
        "exclude": list(spec.filter.exclude),
        "dtype": dtype,
        **extra,
    }


def check_out(out: Path) -> None:
    """Refuse an --out that cannot become a new model folder, before any model is loaded."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ThicketsError(f"output {out} already exists and is not an empty folder; choose another --out")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ThicketsError(f"output {out} cannot be made: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ThicketsError(f"output {out} cannot be made: {parent} is not writable")


def build(model: str, spec: PerturbationSpec, dtype: str = "float32") -> tuple[TransformersEngine, ModelIdentity]:
    """(engine, identity): the engine holding the model with the perturbation applied for good."""

    loaded, identity = load_engine(model, dtype=dtype)
    engine = cast("TransformersEngine", loaded)  # load_engine's default engine
    engine.perturb(spec, merge=True)  # never restored: this model is the perturbed one, merged
    return engine, identity


def save_model(folder: Path, engine: TransformersEngine, prompting: dict[str, Any] | None) -> None:
    """The engine's model as it stands as a plain model folder: weights, tokenizer, a vision-language
    model's processor, the keys transformers 4.x reads and, given, how the run prompted it (portable.py).
    What every command that ships a model writes."""
    engine.model.save_pretrained(folder)
    engine.tokenizer.save_pretrained(folder)
    if engine.processor is not None:
        engine.processor.save_pretrained(folder)
    make_portable(folder, prompting)


ADAPTER_DIR = "adapter"


def export_spec(
    model: str,
    spec: PerturbationSpec,
    out: str | Path,
    *,
    dtype: str = "float32",
    prompting: dict[str, Any] | None = None,
    adapter_base: str | None = None,
    **extra: Any,
) -> Path:
    """Write base + sigma * noise(spec) as a Hugging Face folder with its recipe (and, for a low-rank
    expert, its LoRA adapter in `adapter/`, naming `adapter_base` as its base: by default the base model's
    folder on this machine), readable by transformers 4.5x and 5.x (portable.py), with the run's
    `prompting` beside it when given."""
    out = Path(out)
    check_out(out)
    if adapter_base is not None and not (Path(adapter_base) / "config.json").is_file():
        raise ThicketsError(f"--adapter-base {adapter_base} is not a model folder (no config.json)")
    engine, identity = build(model, spec, dtype)
    m = engine.model
    sites = None
    if spec.strategy == "lowrank":  # every kept matrix has a site, or one line before a byte is written
        from thickets.engines.lowrank_sites import lowrank_sites
        from thickets.engines.transformers_engine import canonical_parameters

        sites = lowrank_sites(m, canonical_parameters(m), spec.filter.keeps)
    with written_whole(out) as tmp:
        save_model(tmp, engine, prompting)
        (tmp / RECIPE_NAME).write_text(json.dumps(recipe(identity.to_dict(), spec, dtype, **extra), indent=2) + "\n")
        if spec.strategy == "lowrank":
            base = adapter_base or str(local_folder(identity).resolve())
            write_adapter(m, [(spec, 1.0)], tmp / ADAPTER_DIR, base_name=base, sites=sites)
    return out


BASE_NAME = "thickets_base.json"


def export_base(
    model: str, out: str | Path, *, dtype: str = "float32", prompting: dict[str, Any] | None = None
) -> Path:
    """The unperturbed model as a plain folder (what thickets starts from: for the embedded default, the
    dequantized GGUF, which no hub model is), readable by transformers 4.5x and 5.x: the base an exported
    adapter can name, and the baseline a harness compares against. Its identity is written beside it."""
    out = Path(out)
    check_out(out)
    loaded, identity = load_engine(model, dtype=dtype)
    engine = cast("TransformersEngine", loaded)
    with written_whole(out) as tmp:
        save_model(tmp, engine, prompting)
        record = {"thickets_version": __version__, "base_model": identity.to_dict(), "dtype": dtype}
        (tmp / BASE_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return out


def run_prompting(config: SearchConfig) -> dict[str, Any]:
    """How a run prompted its model (portable.prompting_of), per task in a multi-task run."""
    task = task_for(config)
    tokenizer = load_tokenizer(resolve(config.model))
    used = uses_chat_template(tokenizer, config.chat_template)
    parts = task.parts or {task.name: task}
    first = next(iter(parts.values()))
    out = prompting_of(used, first.system_prompt, first.stop, config.max_new_tokens)
    if task.parts:
        out["per_task"] = {n: {"system_prompt": t.system_prompt, "stop": list(t.stop)} for n, t in parts.items()}
    return out


def write_adapter(
    model: Any,
    terms: Sequence[tuple[PerturbationSpec, float]],
    out: Path,
    base_name: str,
    sites: list[Site] | None = None,
) -> None:
    """A weighted sum of low-rank experts (one expert: weight 1) as one peft LoRA adapter: each term's factors
    side by side, so K experts of rank R make an adapter of rank K x R; lora_alpha = its rank (scaling 1),
    each term's weight times sigma / sqrt(R) folded into its A (lowrank_sites.adapter_scale); a site of every
    kept matrix, as the engine applies it (Linear, GPT-2's Conv1D with fan_in_fan_out, token embeddings),
    anything else refused before a byte is written. The terms share a rank and a filter (one run's).

    Applied unmerged by peft it is the expert (or the merge) thickets scores (up to the float32 rounding of
    the adapter's product), except with tied embeddings: peft applies an embedding's adapter to the input
    side only, and tying it to the head too (ensure_weight_tying) would make a merge add the change twice
    to the shared tensor (peft issue 2777); merge the adapter of a tied model. Merged (merge_and_unload) it
    is the exported model."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from thickets.engines.lowrank_sites import adapter_scale, lowrank_sites
    from thickets.engines.transformers_engine import canonical_parameters

    spec = terms[0][0]
    if any(s.strategy != "lowrank" or s.rank != spec.rank or s.filter != spec.filter for s, _ in terms):
        raise ThicketsError("an adapter sums low-rank experts of one rank and one filter only")
    tensors: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    fan_in_fan_out = False
    params = canonical_parameters(model)
    paths = {id(m): n for n, m in model.named_modules()}
    for site in lowrank_sites(model, params, spec.filter.keeps) if sites is None else sites:
        path = paths[id(site.module)]
        if path in targets:
            continue
        if site.kind == "linear" and path != site.name.rpartition(".")[0]:
            continue  # a head tied to its embedding: the shared tensor's change is the embedding's adapter
        rows, cols = matrix_shape(params[site.name].shape) or (0, 0)
        pieces = []
        for s, weight in terms:
            a, b = lowrank_factors(s.seed, site.name, rows, cols, s.rank)
            scale = adapter_scale(s) * np.float32(weight)  # times float32(1), exactly itself, for one expert
            pieces.append((torch.from_numpy(a * scale), torch.from_numpy(b.copy())))
        a_scaled = torch.cat([a for a, _ in pieces], dim=1)  # [rows, K R]
        b_all = torch.cat([b for _, b in pieces], dim=1)  # [cols, K R]
        prefix = f"base_model.model.{path}"
        if site.kind == "embedding":  # delta.T = lora_B @ lora_A
            tensors[f"{prefix}.lora_embedding_A"] = a_scaled.T.contiguous()
            tensors[f"{prefix}.lora_embedding_B"] = b_all.contiguous()
        elif site.kind == "linear":  # delta = lora_B @ lora_A
            tensors[f"{prefix}.lora_A.weight"] = b_all.T.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = a_scaled.contiguous()
        else:  # Conv1D holds W as [in, out]: delta.T = lora_B @ lora_A
            tensors[f"{prefix}.lora_A.weight"] = a_scaled.T.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b_all.contiguous()
            fan_in_fan_out = True
        targets.append(path)
    out.mkdir(parents=True)
    LoraConfig(
        r=spec.rank * len(terms),
        lora_alpha=spec.rank * len(terms),
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        base_model_name_or_path=base_name,  # peft's Auto classes load the base the config names
        task_type="CAUSAL_LM",  # and need the task type
    ).save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"))


def export_candidate(run_dir: str | Path, rank: int, out: str | Path, adapter_base: str | None = None) -> Path:
    """Export the candidate at `rank` (1 = best on validation) of a run. The base model must be the one
    the run was made with (its content hash), or the export would be another model."""

    config = load_run_config(run_dir)
    with RunStore.open(run_dir, write=False) as store:
        ranked = rank_candidates(store.candidates())
        recorded = store.meta("model_identity") or {}
        made_under = (store.meta("versions") or {}).get("transformers")
    if not 1 <= rank <= len(ranked):
        raise ThicketsError(f"rank must be between 1 and {len(ranked)} (the candidates in {run_dir}), got {rank}")
    check_out(Path(out))
    identity = resolve(config.model)
    if recorded.get("sha256") and not same_model(recorded, identity, made_under):
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
        prompting=run_prompting(config),
        adapter_base=adapter_base,
        run={
            "run_dir": str(Path(run_dir).resolve()),
            "rank": rank,
            "index": c.idx,
            "val_score": c.score,
            "task": config.task,
        },
    )


def export_round(run_dir: str | Path, round_: int, out: str | Path, distillation: str = "distill") -> Path:
    """Copy distillation round N's model out of a run folder, with its round record beside it: the model
    is checked against the hash the round recorded, so what is shipped is what the report measured."""
    record_path = Path(run_dir) / distillation / f"round-{round_}" / "round.json"
    if not record_path.is_file():
        raise ThicketsError(
            f"{run_dir} has no finished round {round_} of distillation {distillation!r} (run `thickets distill` first)"
        )
    record = json.loads(record_path.read_text())
    out = Path(out)
    check_out(out)
    source = Path(record["model"]["path"])
    if not same_model(record["model"], resolve(str(source))):
        raise ThicketsError(f"round {round_}'s model in {source} has changed since the round recorded it")
    with written_whole(out) as tmp:
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        make_portable(tmp, run_prompting(load_run_config(run_dir)))
        (tmp / "thickets_distill.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


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
        rank=int(data.get("rank", 0)),
    )


def rebuild(recipe_path: str | Path, model: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) rebuilt from a recipe; the base's content hash must match the recorded one."""
    data = json.loads(Path(recipe_path).read_text())

    base = data["base_model"]
    name = model or base["name"]
    identity = resolve(name)
    if not same_model(base, identity, data.get("versions", {}).get("transformers")):
        raise ThicketsError(f"base model {name} is not the one the recipe was made from (content hash differs)")
    engine, _ = build(name, spec_from_recipe(data), data.get("dtype", "float32"))
    return engine.model, engine.tokenizer
