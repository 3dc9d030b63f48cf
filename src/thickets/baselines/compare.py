"""`thickets compare`: RandOpt, ES and GRPO on one model and task, at one budget of generated tokens.

Every method draws on the same validation prompts and is judged on the same held-out test split.
The budget counts tokens generated while training or selecting (wall time is reported beside
it). RandOpt's ensemble also pays at test time, K answers per question; that cost is shown
next to the single-model methods rather than hidden.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from thickets.analysis.plots import pyplot, save
from thickets.baselines.es import ESConfig, run_es
from thickets.baselines.grpo import GRPOSettings, run_grpo
from thickets.engines import Engine, count_tokens, load_engine
from thickets.errors import ThicketsError
from thickets.options import commas, option, parse_floats
from thickets.progress import console
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.scoring import evaluate, task_for
from thickets.randopt.search import search
from thickets.randopt.store import RunStore
from thickets.tasks import Example, Task
from thickets.tasks.splits import make_splits

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


@dataclass(frozen=True)
class CompareConfig:
    """RandOpt, ES and GRPO at one budget of generated tokens, on one test split."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m")
    task: str = option("products", "task name (see `thickets tasks`)")
    budget: int = option(100_000, "generated tokens per method")
    val_size: int = option(32, "validation (training) examples")
    test_size: int = option(100, "held-out test examples")
    max_new_tokens: int = option(32, "tokens generated at most per answer")
    sigmas: tuple[float, ...] = option(
        (1e-3, 2e-3), "RandOpt's sigma grid", flag="--sigma", parse=parse_floats, show=commas
    )
    top_k: int = option(5, "RandOpt's K")
    es_population: int = option(8, "ES perturbations per iteration")
    es_sigma: float = option(1e-3, "ES noise scale")
    es_alpha: float = option(5e-4, "ES step size")
    grpo_learning_rate: float = option(1e-5, "GRPO learning rate")
    grpo_num_generations: int = option(4, "GRPO completions per prompt")
    grpo_prompts_per_step: int = option(2, "GRPO prompts per step")
    seed: int = option(0, "seed of all three methods")

    def __post_init__(self) -> None:
        if self.budget < 1 or self.val_size < 1 or self.test_size < 1 or self.top_k < 1:
            raise ThicketsError("budget, val-size, test-size and top-k must be at least 1")


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
    marks: dict[float, tuple[int, int]] = {}
    while spent < cfg.budget:
        n += 1
        search(replace(search_cfg, population=n), run_dir, engine=engine, progress=False)
        with RunStore.open(run_dir, write=False) as store:  # only what this step generated is new
            spent += sum(
                count_tokens(engine.tokenizer, store.completions(m, "val").values())
                for m in (["base"] if n == 1 else []) + [f"cand:{n - 1}"]
            )
        for frac in (0.25, 0.5):
            if spent >= frac * cfg.budget and frac not in marks:
                marks[frac] = (n, spent)
    seconds = time.perf_counter() - t0
    marks[1.0] = (n, spent)
    curve: list[dict[str, Any]] = []
    for _, (count, used) in sorted(marks.items()):
        k = min(cfg.top_k, count)
        sub = out / f"randopt_{count}"
        if count < n:  # the first `count` candidates, as the run stood when it had spent that much
            import shutil

            shutil.copytree(run_dir, sub, dirs_exist_ok=True)
            with RunStore.open(sub) as store:
                store.keep_first(count)
        else:
            sub = run_dir
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
        "curve": curve,
        "test_answers_per_question": final["k"],
        "test_tokens_per_question": test_tokens,
    }


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


def compare(cfg: CompareConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:

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
    task = task_for(search_cfg)
    _, test = make_splits(task, search_cfg.split_seed, cfg.val_size, cfg.test_size)
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
    methods: tuple[tuple[str, Callable[[], dict[str, Any]]], ...] = (
        ("RandOpt", lambda: run_randopt(cfg, out, engine, task, test, search_cfg)),
        ("ES", lambda: run_es_method(cfg, out, task, test, search_cfg)),
        ("GRPO", lambda: run_grpo_method(cfg, out, task, test, search_cfg)),
    )
    for name, fn in methods:
        if progress:
            console.print(f"compare: {name} with a budget of {cfg.budget} generated tokens")
        rows.append(fn())
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
