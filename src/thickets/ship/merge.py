"""One model without gradients: the base plus a weighted sum of the top-K experts' perturbations, with an
overall scale chosen on validation, gated on held-out questions beside the base, the best single expert
and the top-K vote, and written as a model folder with a recipe that rebuilds it bitwise from the run (and,
for low-rank experts, the merge as one LoRA adapter of rank K x R in `adapter/`).

The authors average the top-K perturbations (`mean`); weighting each by its validation gain over the base
(`reward`) is the first half of CoRP's aggregate. Every candidate's noise is a pure function of its seed
and each parameter's name, so the sum is made one tensor at a time (TransformersEngine.perturb_sum),
never holding K perturbations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from thickets.disk import written_whole
from thickets.engines import count_tokens
from thickets.engines.transformers_engine import TransformersEngine
from thickets.errors import ThicketsError
from thickets.models import local_folder, resolve, same_model
from thickets.noise import NOISE_VERSIONS, PerturbationSpec
from thickets.progress import bar
from thickets.randopt.ensemble import StoredAnswers
from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import engine_for, evaluate, task_for
from thickets.randopt.store import BASE, Candidate, RunStore, Summary, candidate_model
from thickets.randopt.vote import fully_scored, paired_gain, rank, vote_outcomes
from thickets.ship.export import ADAPTER_DIR, check_out, run_prompting, save_model, spec_from_recipe, write_adapter
from thickets.ship.merge_config import MergeConfig
from thickets.tasks.splits import make_splits
from thickets.version import __version__

MERGE_NAME = "thickets_merge.json"


def gains_over(experts: list[Candidate], base_score: float) -> list[float]:
    """Each expert's validation gain over the base, 0 where it has none."""
    return [max(0.0, c.score - base_score) for c in experts]


def weights(method: str, experts: list[Candidate], base_score: float, gram: Any = None) -> list[float]:
    """Each expert's weight, summing to 1: equal (mean); proportional to its validation gain over the base
    (reward); or (corp) its gain times its compatibility, the cosine between its perturbation and the
    gain-weighted sum of all of them (0 where negative), from `gram`, the perturbations' inner products."""
    if method == "mean":
        return [1.0 / len(experts)] * len(experts)
    gains = gains_over(experts, base_score)
    if not sum(gains):
        raise ThicketsError(
            f"--method {method}: no expert of the top K beats the base on validation, so every weight is 0; "
            "use --method mean"
        )
    if method == "corp":
        if gram is None:
            return [1.0] * len(experts)  # checked before the model loads: the weights come with the gram
        c = compatibility(gram, gains)
        gains = [g * max(0.0, ci) for g, ci in zip(gains, c)]
        if not sum(gains):
            raise ThicketsError("--method corp: no rewarded expert agrees with the rewarded direction; use reward")
    return [g / sum(gains) for g in gains]


def compatibility(gram: Any, gains: list[float]) -> list[float]:
    """cos(delta_i, d) for d = sum_j gains_j delta_j, from the inner products gram[i, j] = <delta_i, delta_j>."""
    g = np.asarray(gram, dtype=np.float64)
    r = np.asarray(gains, dtype=np.float64)
    along = g @ r  # <delta_i, d>
    norm_d = math.sqrt(max(float(r @ g @ r), 0.0))
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    return [float(a / (n * norm_d)) if n > 0 and norm_d > 0 else 0.0 for a, n in zip(along, norms)]


def terms_of(specs: list[PerturbationSpec], w: list[float], scale: float) -> list[tuple[PerturbationSpec, float]]:
    """The weighted sum's terms at an overall scale: weights rounded to float32 once, as perturb_sum uses them."""
    return [(spec, float(np.float32(scale * wi))) for spec, wi in zip(specs, w)]


def _check(cfg: MergeConfig) -> tuple[Any, Any, list[Candidate], float, list[Any], list[Any]]:
    """Everything bad input can break, before a model loads or anything is written; (run config, task,
    experts, the base's validation score, validation, the gate's questions)."""
    config = load_run_config(cfg.run_dir)
    check_out(Path(cfg.out))
    if cfg.adapter_base is not None and not (Path(cfg.adapter_base) / "config.json").is_file():
        raise ThicketsError(f"--adapter-base {cfg.adapter_base} is not a model folder (no config.json)")
    if config.noise_version == 1:
        raise ThicketsError("runs made with noise version 1 cannot be merged; merge a run made since 0.2")
    task = task_for(config)
    if task.images:
        raise ThicketsError("merging a run about images is not built yet")
    val, test = make_splits(task, config.split_seed, config.val_size, cfg.gate_size, scheme=config.split_scheme)
    with RunStore.open(cfg.run_dir, write=False) as store:
        ranked = fully_scored(rank(store.candidates()))
        base = Summary.of(list(store.scores(BASE, "val").values()))
    if cfg.top_k > len(ranked):
        raise ThicketsError(
            f"--top-k {cfg.top_k} is more than the {len(ranked)} fully scored candidates of {cfg.run_dir}"
        )
    experts = ranked[: cfg.top_k]
    weights(cfg.method, experts, base.score)  # refused now, not after the model loads
    return config, task, experts, base.score, val, test


def merge(cfg: MergeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Choose the scale on validation, gate the merged model on held-out questions, write it; its report."""
    config, task, experts, base_score, val, test = _check(cfg)
    specs = [config.candidate(c.idx) for c in experts]
    engine = cast("TransformersEngine", engine_for(config))
    gram = engine.delta_gram(specs) if cfg.method == "corp" else None
    w = weights(cfg.method, experts, base_score, gram)
    tried = []
    with bar("merge: scales on validation", len(cfg.scales), progress) as update:
        for scale in cfg.scales:
            engine.perturb_sum(terms_of(specs, w, scale))
            try:
                rows = evaluate(engine, task, val, config)
            finally:
                engine.restore()
            tokens = count_tokens(engine.tokenizer, [r.completion for r in rows])
            tried.append({"scale": scale, "val_score": Summary.of([r.score for r in rows]).score, "tokens": tokens})
            update()
    best = max(tried, key=lambda t: (t["val_score"], -abs(t["scale"] - 1.0)))
    terms = terms_of(specs, w, best["scale"])
    positions = list(range(len(test)))
    with RunStore.open(cfg.run_dir) as store:  # the base's and experts' test answers, stored as ensemble stores them
        answers = StoredAnswers(store, config, task, test, engine)
        base = answers.of(BASE, None, positions)
        per_expert = [answers.of(candidate_model(c.idx), s, positions) for c, s in zip(experts, specs)]
    engine.perturb_sum(terms)
    try:
        merged_rows = evaluate(engine, task, test, config)
        report = _gate(cfg, config, experts, tried, best, base, per_expert, [r.score.correct for r in merged_rows])
        report["weights"] = w
        report["merged_tokens_per_answer"] = count_tokens(engine.tokenizer, [r.completion for r in merged_rows]) / len(
            test
        )
        if gram is not None:
            report["compatibility"] = compatibility(gram, gains_over(experts, base_score))
        _write(cfg, config, engine, specs, w, best["scale"], report)
    finally:
        engine.restore()
    return report


def _gate(
    cfg: MergeConfig,
    config: Any,
    experts: list[Candidate],
    tried: list[dict[str, float]],
    best: dict[str, float],
    base: dict[int, Any],
    per_expert: list[dict[int, Any]],
    merged: list[bool],
) -> dict[str, Any]:
    n = len(merged)
    base_ok = [base[i].correct for i in range(n)]
    single_ok = [per_expert[0][i].correct for i in range(n)]
    vote_ok = [bool(v and v.correct) for v in vote_outcomes(per_expert, n)]

    def row(label: str, ok: list[bool], answers: int) -> dict[str, Any]:
        return {
            "label": label,
            "answers_per_question": answers,
            "accuracy": sum(ok) / n,
            "vs_base": None if ok is base_ok else paired_gain(ok, base_ok),
        }

    return {
        "run_dir": str(Path(cfg.run_dir).resolve()),
        "method": cfg.method,
        "top_k": cfg.top_k,
        "experts": [c.idx for c in experts],
        "scales_tried": tried,
        "scale": best["scale"],
        "gate_size": n,
        "rows": [
            row("base", base_ok, 1),
            row("best single expert", single_ok, 1),
            row(f"top-{cfg.top_k} vote", vote_ok, cfg.top_k),
            row(f"merged top-{cfg.top_k} ({cfg.method}, scale {best['scale']:g})", merged, 1),
        ],
        "merged_vs_vote": paired_gain(merged, vote_ok),
        "model": {"model": config.model, "task": config.task},
    }


def _write(
    cfg: MergeConfig,
    config: Any,
    engine: TransformersEngine,
    specs: list[PerturbationSpec],
    w: list[float],
    scale: float,
    report: dict[str, Any],
) -> None:
    identity = resolve(config.model)
    recipe = {
        "thickets_version": __version__,
        "base_model": identity.to_dict(),
        "dtype": config.dtype,
        "method": cfg.method,
        "scale": scale,
        # the terms in the order they are summed: rebuild() repeats perturb_sum with exactly these
        "terms": [
            {
                "seed": s.seed,
                "sigma": s.sigma,
                "strategy": s.strategy,
                "rank": s.rank,
                "include": list(s.filter.include),
                "exclude": list(s.filter.exclude),
                "noise_version": NOISE_VERSIONS[s.version],
                "weight": weight,
            }
            for s, (_, weight) in zip(specs, terms_of(specs, w, scale))
        ],
        "gate": report,
    }
    with written_whole(Path(cfg.out)) as tmp:
        save_model(tmp, engine, run_prompting(config))
        (tmp / MERGE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
        if specs[0].strategy == "lowrank":  # the merge as one adapter of rank K x R
            base = cfg.adapter_base or str(local_folder(identity).resolve())
            write_adapter(engine.model, terms_of(specs, w, scale), tmp / ADAPTER_DIR, base_name=base)


def rebuild(recipe_path: str | Path, model: str | None = None) -> TransformersEngine:
    """An engine holding the merged model of a recipe, rebuilt from the base: the same weights, bitwise (on
    the same kind of device). The base must be the one the recipe was made from (its content hash)."""
    data = json.loads(Path(recipe_path).read_text())
    base = data["base_model"]
    identity = resolve(model or base["name"])
    if not same_model(base, identity):
        raise ThicketsError(f"base model {identity.name} is not the one the merge was made from (content hash differs)")
    from thickets.engines import load_engine

    loaded, _ = load_engine(model or base["name"], dtype=data.get("dtype", "float32"))
    engine = cast("TransformersEngine", loaded)
    engine.perturb_sum([(spec_from_recipe(t), float(t["weight"])) for t in data["terms"]])
    return engine
