"""Evolution strategies (Qiu et al., 2025) on thickets' perturbation engine: the ES baseline.

Each iteration scores P perturbations theta + sigma * eps_i of the current weights, z-scores
their rewards within the population, and moves theta += alpha * mean(z_i * eps_i). The noise is
never stored: eps_i is regenerated from its seed for the update, exactly as for scoring. The
whole trajectory is therefore fixed by (run seed, iteration, i) and the rewards, which the run
folder keeps, so resuming replays the updates from the log and goes on, bitwise the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from thickets.disk import write_whole
from thickets.engines import count_tokens, load_engine
from thickets.errors import ThicketsError
from thickets.noise import NOISE_VERSION, STRATEGIES, PerturbationSpec, add_noise_
from thickets.options import MAX_RATE, SEEDS, check_bounds, option
from thickets.progress import bar
from thickets.randopt.config import MAX_BATCH, MAX_NEW_TOKENS, MAX_POPULATION, MAX_SPLIT, SearchConfig
from thickets.randopt.scoring import evaluate, evaluate_population, task_for
from thickets.seeds import derive_seed
from thickets.tasks.splits import SPLIT_SCHEME, make_splits
from thickets.tracking import NO_TRACKER, Tracker

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


@dataclass(frozen=True)
class ESConfig:
    """Evolution strategies as Qiu et al. (2025) run them: population 30, sigma 1e-3, step 5e-4."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m")
    task: str = option("countdown", "task name (see `thickets tasks`)")
    iterations: int = option(10, "updates of the weights", bounds=(1, 1_000_000))
    population: int = option(30, "perturbations per iteration", bounds=(2, MAX_POPULATION))
    sigma: float = option(1e-3, "noise scale of the perturbations", bounds=(0, 10))
    alpha: float = option(5e-4, "step size of the update", bounds=(0, MAX_RATE))
    val_size: int = option(32, "examples each perturbation is scored on (the training signal)", bounds=(1, MAX_SPLIT))
    max_new_tokens: int = option(256, "tokens generated at most per answer", bounds=(1, MAX_NEW_TOKENS))
    batch_size: int = option(32, "prompts generated together", bounds=(1, MAX_BATCH))
    seed: int = option(0, "seed of the perturbations", bounds=SEEDS)
    split_seed: int = option(0, "seed of the validation/test splits", bounds=SEEDS)
    strategy: str = option(
        "gaussian",
        "gaussian, or lowrank (EGGROLL: rank-R perturbations, so the update is low-rank too)",
        flag="--noise",
        choices=STRATEGIES,
    )
    rank: int = option(0, "the lowrank strategy's rank R", bounds=(0, 65_536))
    population_batch: int = option(
        1, "low-rank perturbations scored together in one batched forward pass", bounds=(1, MAX_BATCH)
    )
    noise_version: int = option(
        NOISE_VERSION, "the map from seed to noise, fixed by the run folder (version 1 before 0.2)", cli=False
    )
    split_scheme: int = option(
        SPLIT_SCHEME, "how the validation examples are drawn, fixed by the run folder (scheme 1 before 0.2)", cli=False
    )
    #: what a log written before a field existed meant by it
    OLD_LOGS: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"noise_version": 1, "split_scheme": 1, "strategy": "gaussian", "rank": 0, "population_batch": 1}
    )
    #: fields a resumed run may change
    CHANGEABLE: ClassVar[tuple[str, ...]] = ("iterations", "population_batch")

    def __post_init__(self) -> None:
        check_bounds(self)
        if not (self.sigma > 0 and self.alpha > 0):
            raise ThicketsError(f"sigma and alpha must be positive, got {self.sigma} and {self.alpha}")
        if self.strategy == "lowrank" and self.rank < 1:
            raise ThicketsError(f"--noise lowrank needs --rank R of at least 1, got {self.rank}")
        if self.strategy == "relative":  # its scales are the base's, which ES moves every iteration
            raise ThicketsError("ES cannot use --noise relative (it moves the weights the scales are of); use gaussian")
        if self.population_batch < 1 or (self.population_batch > 1 and self.strategy != "lowrank"):
            raise ThicketsError("--population-batch must be at least 1, and above 1 only with --noise lowrank")
        self.spec(0, 0)  # the noise settings are checked there, and only there

    def spec(self, iteration: int, i: int) -> PerturbationSpec:
        return PerturbationSpec(
            derive_seed(b"thickets-es", self.seed, iteration, i),
            self.sigma,
            self.strategy,
            version=self.noise_version,
            rank=self.rank,
        )


def zscore(rewards: Sequence[float]) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std()
    return np.zeros_like(r) if std == 0 else (r - r.mean()) / std


def update_coefficients(cfg: ESConfig, rewards: Sequence[float]) -> list[float]:
    """theta += sum_i c_i * eps_i with c_i = alpha * z_i / P."""
    return [float(cfg.alpha * z / len(rewards)) for z in zscore(rewards)]


def apply_update(
    cfg: ESConfig, iteration: int, coefficients: Sequence[float], params: Sequence[tuple[str, np.ndarray]]
) -> None:
    """In place: params += sum_i c_i * eps_i, each eps_i regenerated from its seed (float32 arrays)."""
    for i, c in enumerate(coefficients):
        if c:
            add_noise_(cfg.spec(iteration, i), params, scale=c / cfg.sigma)  # adds c * eps_i


def es_step(
    cfg: ESConfig,
    iteration: int,
    score: Callable[[list[PerturbationSpec]], list[float]],
    params: Sequence[tuple[str, np.ndarray]],
) -> dict[str, Any]:
    """One iteration: score the population (population_batch perturbations at a time), then update
    `params` (the current theta) in place."""
    specs = [cfg.spec(iteration, i) for i in range(cfg.population)]
    m = cfg.population_batch
    rewards = [r for lo in range(0, len(specs), m) for r in score(specs[lo : lo + m])]
    coefficients = update_coefficients(cfg, rewards)
    apply_update(cfg, iteration, coefficients, params)
    return {"iteration": iteration, "rewards": rewards, "coefficients": coefficients}


def run_es(
    cfg: ESConfig,
    run_dir: str | Path,
    *,
    engine: TransformersEngine | None = None,
    budget_tokens: int | None = None,
    progress: bool = True,
    tracker: Tracker = NO_TRACKER,
) -> dict[str, Any]:
    """ES on a language model; the log in run_dir/es.json makes it resumable (updates replayed from seeds).

    `engine` must hold the loaded weights (ES takes them over). With `budget_tokens`, ES stops after
    the iteration that brings the tokens generated to the budget (at most cfg.iterations)."""

    run_dir = Path(run_dir)
    log_path = run_dir / "es.json"
    log: dict[str, Any] = (
        json.loads(log_path.read_text()) if log_path.exists() else {"config": asdict(cfg), "iterations": []}
    )

    def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        changeable = ESConfig.CHANGEABLE
        return {k: v for k, v in a.items() if k not in changeable} == {
            k: v for k, v in b.items() if k not in changeable
        }

    log["config"] = {**ESConfig.OLD_LOGS, **log["config"]}  # a log from before a field existed
    # the folder decides its noise and its examples
    cfg = replace(cfg, noise_version=log["config"]["noise_version"], split_scheme=log["config"]["split_scheme"])
    if not same(log["config"], asdict(cfg)):
        raise ThicketsError(
            f"{run_dir} holds an ES run with another config (only --iterations may change); use a new folder"
        )
    log["config"] = asdict(cfg)
    search_cfg = SearchConfig(
        model=cfg.model,
        task=cfg.task,
        val_size=cfg.val_size,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        split_seed=cfg.split_seed,
        split_scheme=cfg.split_scheme,
    )
    task = task_for(search_cfg)
    val, _ = make_splits(task, cfg.split_seed, cfg.val_size, scheme=cfg.split_scheme)
    if engine is None:
        loaded, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
        engine = cast("TransformersEngine", loaded)  # load_engine's default engine
    theta = engine.own_base()  # the weights ES moves: owned, writable float32 arrays
    for rec in log["iterations"]:  # resume: replay the logged updates
        apply_update(cfg, rec["iteration"], rec["coefficients"], theta)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens = sum(r.get("tokens", 0) for r in log["iterations"])

    def score(specs: list[PerturbationSpec]) -> list[float]:
        nonlocal tokens
        if len(specs) > 1:
            per_spec = evaluate_population(engine, task, val, search_cfg, specs)
        else:
            per_spec = [evaluate(engine, task, val, search_cfg, specs[0])]
        tokens += sum(count_tokens(engine.tokenizer, [r.completion for r in rows]) for rows in per_spec)
        return [float(np.mean([r.score.reward for r in rows])) for rows in per_spec]

    with bar("es", cfg.iterations, progress) as update:
        update(advance=len(log["iterations"]))
        for it in range(len(log["iterations"]), cfg.iterations):
            if budget_tokens is not None and tokens >= budget_tokens:
                break
            t0, before = time.perf_counter(), tokens
            rec = es_step(cfg, it, score, theta)
            rec.update(
                seconds=time.perf_counter() - t0, tokens=tokens - before, mean_reward=float(np.mean(rec["rewards"]))
            )
            log["iterations"].append(rec)
            write_whole(log_path, json.dumps(log))  # the checkpoint: whole, after every iteration
            update(mean=f"{rec['mean_reward']:.3f}")
            rewards = rec["rewards"]
            tracker.log({"es/mean_reward": rec["mean_reward"], "es/best_reward": max(rewards), "es/tokens": tokens}, it)
    final = evaluate(engine, task, val, search_cfg)  # theta itself
    log["final_val_reward"] = float(np.mean([r.score.reward for r in final]))
    return log
