"""Evolution strategies: the update is regenerated from seeds, it climbs, and a run resumes bitwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thickets.baselines.es import (
    ESConfig,
    apply_update,
    es_step,
    run_es,
    update_coefficients,
)
from thickets.engines import load_engine
from thickets.engines.transformers_engine import canonical_parameters
from thickets.errors import ThicketsError
from thickets.noise import standard_noise


def test_the_update_from_seeds_equals_the_update_from_stored_noise():
    cfg = ESConfig(population=6, sigma=0.1, alpha=0.05)
    rewards = [0.1, 0.5, 0.2, 0.9, 0.4, 0.0]
    coef = update_coefficients(cfg, rewards)
    z = (np.array(rewards) - np.mean(rewards)) / np.std(rewards)
    np.testing.assert_allclose(coef, cfg.alpha * z / 6)
    theta = np.ones((40, 30), np.float32)
    stored = [standard_noise(cfg.spec(3, i), "w", theta.shape) for i in range(6)]  # what a stored-noise ES keeps
    expected = theta + sum(np.float32(c) * e for c, e in zip(coef, stored))
    apply_update(cfg, 3, coef, [("w", theta)])
    np.testing.assert_allclose(theta, expected, rtol=0, atol=1e-6)


def test_es_climbs_a_quadratic_with_a_known_optimum():
    cfg = ESConfig(population=30, sigma=0.05, alpha=0.05)
    target = np.linspace(-1, 1, 20).astype(np.float32)
    theta = np.zeros(20, np.float32)

    def score(specs):
        return [-float(((theta + s.sigma * standard_noise(s, "w", theta.shape) - target) ** 2).sum()) for s in specs]

    start = -float(((theta - target) ** 2).sum())
    for it in range(30):
        es_step(cfg, it, score, [("w", theta)])
    assert -float(((theta - target) ** 2).sum()) > start * 0.5  # at least halfway to the optimum's 0


def test_an_es_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    common = dict(
        model=str(tiny_model_dir),
        task="toy",
        population=4,
        sigma=0.05,
        alpha=0.02,
        val_size=4,
        max_new_tokens=2,
        batch_size=4,
    )
    engine, _ = load_engine(str(tiny_model_dir))
    straight = run_es(ESConfig(iterations=2, **common), tmp_path / "a", engine=engine, progress=False)
    theta_a = {n: p.detach().clone() for n, p in canonical_parameters(engine.model).items()}
    engine2, _ = load_engine(str(tiny_model_dir))
    run_es(ESConfig(iterations=1, **common), tmp_path / "b", engine=engine2, progress=False)
    engine3, _ = load_engine(str(tiny_model_dir))  # a new process, as after a crash: replays iteration 0
    resumed = run_es(ESConfig(iterations=2, **common), tmp_path / "b", engine=engine3, progress=False)
    theta_b = canonical_parameters(engine3.model)
    assert all(torch.equal(theta_a[n], theta_b[n]) for n in theta_a)
    assert [r["rewards"] for r in straight["iterations"]] == [r["rewards"] for r in resumed["iterations"]]
    assert straight["iterations"][0]["tokens"] > 0
    assert json.loads((tmp_path / "b" / "es.json").read_text())["config"]["iterations"] == 2
    with pytest.raises(ThicketsError, match="another config"):
        run_es(ESConfig(iterations=2, **{**common, "sigma": 0.1}), tmp_path / "b", engine=engine3, progress=False)
    # an engine whose weights ES already moved would replay the log on top of them: refused
    with pytest.raises(RuntimeError, match="already handed to ES"):
        run_es(ESConfig(iterations=3, **common), tmp_path / "b", engine=engine3, progress=False)


def test_an_es_log_from_before_noise_versions_resumes_with_the_noise_it_was_made_with(tiny_model_dir, tmp_path):
    common = dict(model=str(tiny_model_dir), task="toy", population=3, sigma=0.05, alpha=0.02, val_size=3)
    common.update(max_new_tokens=2, batch_size=4)
    engine, _ = load_engine(str(tiny_model_dir))
    run_es(ESConfig(iterations=2, noise_version=1, **common), tmp_path / "v1", engine=engine, progress=False)
    theta_v1 = {n: p.detach().clone() for n, p in canonical_parameters(engine.model).items()}
    engine2, _ = load_engine(str(tiny_model_dir))
    run_es(ESConfig(iterations=1, noise_version=1, **common), tmp_path / "old", engine=engine2, progress=False)
    log_path = tmp_path / "old" / "es.json"
    log = json.loads(log_path.read_text())
    del log["config"]["noise_version"]  # as release 0.1 wrote it
    log_path.write_text(json.dumps(log))
    engine3, _ = load_engine(str(tiny_model_dir))
    resumed = run_es(ESConfig(iterations=2, **common), tmp_path / "old", engine=engine3, progress=False)
    assert resumed["config"]["noise_version"] == 1
    theta = canonical_parameters(engine3.model)
    assert all(torch.equal(theta_v1[n], theta[n]) for n in theta)


def test_a_token_budget_stops_es_after_the_iteration_that_reaches_it(tiny_model_dir, tmp_path):
    engine, _ = load_engine(str(tiny_model_dir))
    cfg = ESConfig(
        model=str(tiny_model_dir),
        task="toy",
        iterations=50,
        population=2,
        sigma=0.05,
        alpha=0.02,
        val_size=4,
        max_new_tokens=2,
        batch_size=4,
    )
    log = run_es(cfg, tmp_path, engine=engine, budget_tokens=40, progress=False)
    per_it = [r["tokens"] for r in log["iterations"]]
    assert sum(per_it) >= 40 > sum(per_it[:-1]) and len(per_it) < 50


def test_lowrank_es_batched_moves_the_weights_as_one_at_a_time_and_by_a_low_rank_step(tiny_model_dir, tmp_path):
    """EGGROLL's form of ES: rank-R perturbations scored together, so the update is a sum of rank-R terms."""
    common = dict(model=str(tiny_model_dir), task="toy", population=4, sigma=0.05, alpha=0.02, val_size=3)
    common.update(max_new_tokens=2, batch_size=4, iterations=1, strategy="lowrank", rank=2)
    thetas, logs = [], []
    for m in (1, 4):
        engine, _ = load_engine(str(tiny_model_dir))
        base = {n: p.detach().clone() for n, p in canonical_parameters(engine.model).items()}
        logs.append(run_es(ESConfig(**common, population_batch=m), tmp_path / f"m{m}", engine=engine, progress=False))
        thetas.append({n: p.detach().clone() for n, p in canonical_parameters(engine.model).items()})
    assert logs[0]["iterations"][0]["rewards"] == logs[1]["iterations"][0]["rewards"]
    assert all(torch.equal(thetas[0][n], thetas[1][n]) for n in thetas[0])
    step = (thetas[0]["model.layers.0.mlp.up_proj.weight"] - base["model.layers.0.mlp.up_proj.weight"]).double()
    s = torch.linalg.svdvals(step)
    assert int((s > 1e-3 * s[0]).sum()) <= 4 * 2  # population x rank at most
    assert torch.equal(thetas[0]["model.norm.weight"], base["model.norm.weight"])  # vectors never move
    with pytest.raises(ThicketsError, match="above 1 only with --noise lowrank"):
        ESConfig(population_batch=2)


def test_relative_noise_is_refused_because_es_moves_the_weights_its_scales_are_of():
    with pytest.raises(ThicketsError, match="ES cannot use --noise relative"):
        ESConfig(strategy="relative")
