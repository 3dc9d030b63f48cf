"""`thickets compare`: RandOpt, distilled RandOpt, merged RandOpt, ES and GRPO on one model and task, at
one budget of generated tokens.

Every method draws on the same validation prompts and is judged on the same held-out test split.
The budget counts tokens generated while training or selecting, for distilled RandOpt the completion
tokens its fine-tune trains on, and for merged RandOpt its search's tokens and those of choosing the
merge's scale on validation (wall time is reported beside it). RandOpt's ensemble
also pays at test time, K answers per question; that cost is shown next to the single-model
methods rather than hidden.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.baselines.es import ESConfig, run_es
from thickets.baselines.grpo import GRPOSettings, run_grpo
from thickets.distill.config import DistillConfig
from thickets.distill.rounds import NothingKept, distill
from thickets.engines import Engine, count_tokens, load_engine
from thickets.errors import ThicketsError
from thickets.options import MAX_RATE, SEEDS, check_bounds, commas, option, parse_floats, parse_patterns
from thickets.progress import console
from thickets.randopt.config import MAX_NEW_TOKENS, MAX_POPULATION, MAX_SPLIT, SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.scoring import evaluate, task_for
from thickets.randopt.search import search
from thickets.randopt.store import RunStore, candidate_model, read_config
from thickets.randopt.vote import fully_scored
from thickets.ship.merge_config import METHODS as MERGE_METHODS
from thickets.ship.merge_config import SCALES, MergeConfig
from thickets.tasks import Example, Task
from thickets.tasks.splits import make_splits, train_examples
from thickets.tracking import NO_TRACKER, Tracker

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


METHODS = ("randopt", "distilled", "merged", "es", "grpo")


@dataclass(frozen=True)
class CompareConfig:
    """RandOpt, ES and GRPO at one budget of generated tokens, on one test split."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m")
    methods: tuple[str, ...] = option(
        METHODS, f"methods to run, of {','.join(METHODS)}", parse=parse_patterns, show=commas
    )
    task: str = option("products", "task name (see `thickets tasks`)")
    budget: int = option(100_000, "generated tokens per method", bounds=(1, 10**12))
    val_size: int = option(32, "validation (training) examples", bounds=(1, MAX_SPLIT))
    test_size: int = option(100, "held-out test examples", bounds=(1, MAX_SPLIT))
    max_new_tokens: int = option(32, "tokens generated at most per answer", bounds=(1, MAX_NEW_TOKENS))
    sigmas: tuple[float, ...] = option(
        (1e-3, 2e-3), "RandOpt's sigma grid", flag="--sigma", parse=parse_floats, show=commas
    )
    top_k: int = option(5, "RandOpt's K", bounds=(1, 10_000))
    distill_search_share: float = option(
        0.5,
        "share of the budget distilled RandOpt spends on its search; the rest on traces and training",
        bounds=(0, 1),
    )
    merge_method: str = option(
        "corp", "merged RandOpt's weights (thickets merge --method): mean, reward or corp", choices=MERGE_METHODS
    )
    es_population: int = option(8, "ES perturbations per iteration", bounds=(2, MAX_POPULATION))
    es_sigma: float = option(1e-3, "ES noise scale", bounds=(0, 10))
    es_alpha: float = option(5e-4, "ES step size", bounds=(0, MAX_RATE))
    grpo_learning_rate: float = option(1e-5, "GRPO learning rate", bounds=(0, MAX_RATE))
    grpo_num_generations: int = option(4, "GRPO completions per prompt", bounds=(2, 1024))
    grpo_prompts_per_step: int = option(2, "GRPO prompts per step", bounds=(1, 65_536))
    seed: int = option(0, "seed of all three methods", bounds=SEEDS)

    def __post_init__(self) -> None:
        check_bounds(self)
        if not all(x > 0 for x in (self.es_sigma, self.es_alpha, self.grpo_learning_rate)):
            raise ThicketsError("--es-sigma, --es-alpha and --grpo-learning-rate must be above 0")
        if any(not (s > 0 and math.isfinite(s)) for s in self.sigmas):
            raise ThicketsError(f"--sigma must be positive numbers, got {commas(self.sigmas)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ThicketsError(f"unknown method {unknown[0] if unknown else ''!r}; use some of {', '.join(METHODS)}")
        for derived in ("distilled", "merged"):
            if derived in self.methods and "randopt" not in self.methods:
                raise ThicketsError(f"{derived} RandOpt starts from RandOpt's own search: add randopt to --methods")
        if not 0 < self.distill_search_share <= 1:
            raise ThicketsError(f"distill-search-share must be in (0, 1], got {self.distill_search_share}")


def _accuracy(engine: Engine, task: Task, test: Sequence[Example], config: SearchConfig) -> tuple[float, int]:

    rows = evaluate(engine, task, test, config)
    return float(np.mean([r.score.correct for r in rows])), count_tokens(engine.tokenizer, [r.completion for r in rows])


def run_randopt(
    cfg: CompareConfig, out: Path, engine: Engine, task: Task, test: Sequence[Example], search_cfg: SearchConfig
) -> dict[str, Any]:
    """Candidates one at a time (the run's population extended) until the budget is spent; then the
    top-K vote on the test split, and the same at a quarter and half of the budget."""

    run_dir = out / "randopt"
    t0 = time.perf_counter()
    spent, n = 0, 0
    spent_after: list[int] = []  # tokens spent once the first n candidates were scored (the base's included)
    seconds_after: list[float] = []
    marks: dict[float, tuple[int, int]] = {}
    while spent < cfg.budget:
        n += 1
        search(replace(search_cfg, population=n), run_dir, engine=engine, progress=False)
        with RunStore.open(run_dir, write=False) as store:  # only what this step generated is new
            spent += sum(
                count_tokens(engine.tokenizer, store.completions(m, "val").values())
                for m in (["base"] if n == 1 else []) + [f"cand:{n - 1}"]
            )
        spent_after.append(spent)
        seconds_after.append(time.perf_counter() - t0)
        for frac in (0.25, 0.5):
            if spent >= frac * cfg.budget and frac not in marks:
                marks[frac] = (n, spent)
    seconds = time.perf_counter() - t0
    marks[1.0] = (n, spent)
    curve: list[dict[str, Any]] = []
    for _, (count, used) in sorted(marks.items()):
        k = min(cfg.top_k, count)
        sub = _as_of(run_dir, count, out / f"randopt_{count}") if count < n else run_dir
        report = ensemble(sub, [k], cfg.test_size, engine=engine, progress=False)
        acc = report["ensembles"][0]["accuracy"]
        curve.append({"tokens": used, "candidates": count, "accuracy": acc, "k": k})
    final = curve[-1]
    with RunStore.open(run_dir, write=False) as store:  # what the K experts wrote on the test split
        written = sum(
            count_tokens(engine.tokenizer, store.completions(f"cand:{e['idx']}", "test").values())
            for e in report["experts"]
        )
    test_tokens = written / cfg.test_size
    return {
        "method": f"RandOpt top-{final['k']} vote",
        "train_tokens": final["tokens"],
        "seconds": seconds,
        "accuracy": final["accuracy"],
        "candidates": final["candidates"],
        "spent_after": spent_after,
        "seconds_after": seconds_after,
        "curve": curve,
        "test_answers_per_question": final["k"],
        "test_tokens_per_question": test_tokens,
    }


def _as_of(run_dir: Path, count: int, dest: Path) -> Path:
    """A copy of the run as it stood after its first `count` candidates."""
    shutil.copytree(run_dir, dest, dirs_exist_ok=True)
    with RunStore.open(dest) as store:
        store.keep_first(count)
    return dest


def train_questions(remaining: int, k: int, answer_tokens: float, distill: DistillConfig) -> int:
    """How many train questions the rest of the budget pays for: each costs K answers generated and, at
    most, min(K answers, M) traces trained on for each epoch, at the experts' mean answer length."""
    answers = k * max(1, distill.samples)
    per_question = (answers + distill.epochs * min(answers, distill.max_traces)) * max(1.0, answer_tokens)
    return max(0, int(remaining // per_question))


def run_distilled(
    cfg: CompareConfig,
    out: Path,
    engine: Engine,
    task: Task,
    search_cfg: SearchConfig,
    randopt: dict[str, Any],
    base: dict[str, Any],
) -> dict[str, Any]:
    """Distilled RandOpt (one round of `thickets distill`) within the same budget: RandOpt's own search as
    it stood at `distill_search_share` of the budget, then the top-K experts answer as many train questions
    as the rest pays for, and one model is fine-tuned on the good answers. The budget counts the search's
    generated tokens, the traces' and the completion tokens trained on (each epoch's)."""
    spent_after = randopt["spent_after"]
    count = next(i + 1 for i, s in enumerate(spent_after) if s >= cfg.distill_search_share * cfg.budget)
    searched, k = spent_after[count - 1], min(cfg.top_k, count)
    t0 = time.perf_counter() - randopt["seconds_after"][count - 1]  # the search's time is the method's too
    run_dir = _as_of(out / "randopt", count, out / "distilled")
    with RunStore.open(run_dir, write=False) as store:
        experts = fully_scored(store.candidates())[:k]
        written = [
            count_tokens(engine.tokenizer, store.completions(candidate_model(c.idx), "val").values()) for c in experts
        ]
    answer_tokens = sum(written) / (len(experts) * cfg.val_size)
    settings = DistillConfig(rounds=1, top_k=k, test_size=cfg.test_size, seed=cfg.seed)
    wanted = train_questions(cfg.budget - searched, k, answer_tokens, settings)
    available = len(
        train_examples(
            task, search_cfg.split_seed, cfg.val_size, cfg.test_size, max(1, wanted), scheme=search_cfg.split_scheme
        )
    )
    row: dict[str, Any] = {
        "method": f"distilled RandOpt (top-{k})",
        "candidates": count,
        "test_answers_per_question": 1,
    }
    size = min(wanted, available)
    if size < 1:
        return _undistilled(row, base, searched, 0, 0, time.perf_counter() - t0, "the budget leaves no train question")
    try:
        (record,) = distill(run_dir, replace(settings, train_size=size), progress=False)
    except NothingKept as e:
        return _undistilled(row, base, searched, size, e.tokens_generated, time.perf_counter() - t0, str(e))
    spent = searched + record["tokens_generated"] + record["tokens_trained"]
    distilled = record["test"]["distilled"]
    return {
        **row,
        "train_tokens": spent,
        "seconds": time.perf_counter() - t0,
        "accuracy": distilled["accuracy"],
        "train_questions": size,
        "traces_kept": record["kept_total"],
        "tokens": {"search": searched, "traces": record["tokens_generated"], "trained": record["tokens_trained"]},
        "curve": [{"tokens": spent, "accuracy": distilled["accuracy"]}],
        "test_tokens_per_question": distilled["tokens_per_answer"],
    }


def _undistilled(
    row: dict[str, Any], base: dict[str, Any], searched: int, questions: int, traces: int, seconds: float, why: str
) -> dict[str, Any]:
    """Nothing to train on: the method's model is the base, unchanged, and the row says why."""
    tokens = {"search": searched, "traces": traces, "trained": 0}
    extra = {"train_questions": questions, "traces_kept": 0, "tokens": tokens, "not_trained": why}
    return _as_base(row, base, searched + traces, seconds, extra)


def _as_base(
    row: dict[str, Any], base: dict[str, Any], spent: int, seconds: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """A derived method that made no model of its own: it answers as the base, having spent `spent` tokens."""
    return {
        **row,
        **extra,
        "train_tokens": spent,
        "seconds": seconds,
        "accuracy": base["accuracy"],
        "curve": [{"tokens": spent, "accuracy": base["accuracy"]}],
        "test_tokens_per_question": base["test_tokens_per_question"],
    }


def run_merged(cfg: CompareConfig, out: Path, randopt: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Merged RandOpt (`thickets merge`) within the same budget: RandOpt's search as it stood when what is
    left pays for choosing the merge's scale (one validation pass a scale, at a candidate's mean cost),
    its top K merged into one model, which answers the test split (the merge's gate) once a question."""
    spent_after = randopt["spent_after"]
    per_pass = spent_after[-1] / len(spent_after)
    fits = [i + 1 for i, s in enumerate(spent_after) if s + len(SCALES) * per_pass <= cfg.budget]
    row: dict[str, Any] = {"method": f"merged RandOpt ({cfg.merge_method})", "test_answers_per_question": 1}
    t0 = time.perf_counter()
    if not fits:
        return _unmerged(row, base, 0, 0, 0.0, "the budget leaves no room to choose the merge's scale")
    count = fits[-1]
    searched, k = spent_after[count - 1], min(cfg.top_k, count)
    t0 -= randopt["seconds_after"][count - 1]  # the search's time is the method's too
    run_dir = _as_of(out / "randopt", count, out / "merged")
    merged_dir = out / "merged_model"
    shutil.rmtree(merged_dir, ignore_errors=True)  # a model folder is output only: a rerun writes it again
    settings = MergeConfig(
        run_dir=str(run_dir), out=str(merged_dir), top_k=k, method=cfg.merge_method, gate_size=cfg.test_size
    )
    from thickets.ship.merge import merge  # torch with it: not when the command line starts

    try:
        report = merge(settings, progress=False)
    except ThicketsError as e:  # no expert beats the base, or none agrees with the rewarded direction
        return _unmerged(row, base, count, searched, time.perf_counter() - t0, str(e))
    spent = searched + sum(t["tokens"] for t in report["scales_tried"])
    merged = report["rows"][-1]
    return {
        **row,
        "candidates": count,
        "train_tokens": spent,
        "seconds": time.perf_counter() - t0,
        "accuracy": merged["accuracy"],
        "scale": report["scale"],
        "tokens": {"search": searched, "scales": spent - searched},
        "curve": [{"tokens": spent, "accuracy": merged["accuracy"]}],
        "test_tokens_per_question": report["merged_tokens_per_answer"],
    }


def _unmerged(
    row: dict[str, Any], base: dict[str, Any], count: int, searched: int, seconds: float, why: str
) -> dict[str, Any]:
    """Nothing merged: the method's model is the base, unchanged, having spent the search's tokens and time
    (and the failed merge's time), and the row says why."""
    return _as_base(row, base, searched, seconds, {"candidates": count, "not_merged": why})


def run_es_method(
    cfg: CompareConfig, out: Path, task: Task, test: Sequence[Example], search_cfg: SearchConfig
) -> dict[str, Any]:

    loaded, _ = load_engine(cfg.model, batch_size=search_cfg.batch_size)
    engine = cast("TransformersEngine", loaded)  # load_engine's default engine, which ES needs
    t0 = time.perf_counter()
    # every iteration generates at least one token, so the budget stops ES before this many iterations
    es_cfg = ESConfig(
        model=cfg.model,
        task=cfg.task,
        iterations=cfg.budget,
        population=cfg.es_population,
        sigma=cfg.es_sigma,
        alpha=cfg.es_alpha,
        val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=search_cfg.batch_size,
        seed=cfg.seed,
        split_scheme=search_cfg.split_scheme,
    )
    log = run_es(es_cfg, out / "es", engine=engine, budget_tokens=cfg.budget, progress=False)
    spent, it = sum(r["tokens"] for r in log["iterations"]), len(log["iterations"])
    seconds = time.perf_counter() - t0
    acc, tokens = _accuracy(engine, task, test, search_cfg)
    return {
        "method": "ES",
        "train_tokens": spent,
        "seconds": seconds,
        "accuracy": acc,
        "iterations": it,
        "curve": [{"tokens": spent, "accuracy": acc}],
        "test_answers_per_question": 1,
        "test_tokens_per_question": tokens / len(test),
    }


def run_grpo_method(
    cfg: CompareConfig, out: Path, task: Task, test: Sequence[Example], search_cfg: SearchConfig
) -> dict[str, Any]:

    per_step = cfg.grpo_prompts_per_step * cfg.grpo_num_generations * cfg.max_new_tokens
    steps = max(1, cfg.budget // per_step)  # an upper bound on tokens: rows that stop early spend less
    log = run_grpo(
        GRPOSettings(
            model=cfg.model,
            task=cfg.task,
            steps=steps,
            num_generations=cfg.grpo_num_generations,
            prompts_per_step=cfg.grpo_prompts_per_step,
            learning_rate=cfg.grpo_learning_rate,
            max_new_tokens=cfg.max_new_tokens,
            val_size=cfg.val_size,
            seed=cfg.seed,
            split_scheme=search_cfg.split_scheme,
        ),
        out / "grpo",
        progress=False,
    )
    engine, _ = load_engine(log["model_dir"], batch_size=search_cfg.batch_size)
    acc, tokens = _accuracy(engine, task, test, search_cfg)
    return {
        "method": "GRPO (TRL)",
        "train_tokens": log["tokens"],
        "seconds": log["seconds"],
        "accuracy": acc,
        "steps": steps,
        "curve": [{"tokens": log["tokens"], "accuracy": acc}],
        "test_answers_per_question": 1,
        "test_tokens_per_question": tokens / len(test),
    }


def compare(
    cfg: CompareConfig, out: str | Path, progress: bool = True, tracker: Tracker = NO_TRACKER
) -> dict[str, Any]:

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    search_cfg = SearchConfig(
        model=cfg.model,
        task=cfg.task,
        population=1,
        sigmas=cfg.sigmas,
        val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )
    earlier = read_config(out / "randopt")  # a comparison begun before keeps the examples it began with
    if earlier is not None:
        search_cfg = replace(search_cfg, split_scheme=earlier.split_scheme)
    task = task_for(search_cfg)
    _, test = make_splits(task, search_cfg.split_seed, cfg.val_size, cfg.test_size, scheme=search_cfg.split_scheme)
    engine, _ = load_engine(cfg.model, batch_size=search_cfg.batch_size)
    base_acc, base_tokens = _accuracy(engine, task, test, search_cfg)
    rows: list[dict[str, Any]] = [
        {
            "method": "base",
            "train_tokens": 0,
            "seconds": 0.0,
            "accuracy": base_acc,
            "curve": [{"tokens": 0, "accuracy": base_acc}],
            "test_answers_per_question": 1,
            "test_tokens_per_question": base_tokens / len(test),
        }
    ]
    methods: dict[str, Callable[[], dict[str, Any]]] = {
        "randopt": lambda: run_randopt(cfg, out, engine, task, test, search_cfg),
        "distilled": lambda: run_distilled(cfg, out, engine, task, search_cfg, rows[1], rows[0]),  # rows[1]: RandOpt's
        "merged": lambda: run_merged(cfg, out, rows[1], rows[0]),
        "es": lambda: run_es_method(cfg, out, task, test, search_cfg),
        "grpo": lambda: run_grpo_method(cfg, out, task, test, search_cfg),
    }
    for name in (m for m in METHODS if m in cfg.methods):
        if progress:
            console.print(f"compare: {name} with a budget of {cfg.budget} generated tokens")
        rows.append(methods[name]())
    for row in rows:  # one group of figures per method, as the table has them
        slug = re.sub(r"[^a-z0-9]+", "_", row["method"].lower()).strip("_")
        tracker.log({f"compare/{slug}/{k}": v for k, v in row.items()}, 0)
    result = {"config": asdict(cfg), "test_size": len(test), "rows": rows}
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "compare.png")
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    base = result["rows"][0]["accuracy"]
    ax.axhline(base, color="black", ls="--", label="base")
    for i, row in enumerate(result["rows"][1:]):
        pts = [(0, base)] + [(p["tokens"], p["accuracy"]) for p in row["curve"]]
        ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=row["method"])
    ax.axvline(result["config"]["budget"], color="0.6", lw=0.8)
    ax.set_xlabel("generated tokens spent on training / selection")
    ax.set_ylabel(f"test accuracy ({result['test_size']} questions)")
    ax.set_title(f"{result['config']['task']} on {result['config']['model']}: equal budgets")
    ax.legend(fontsize=8)
    return save(fig, path)
