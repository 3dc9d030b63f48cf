"""The 1D signal experiment: the quick grid measures what it says, and pretraining on many families
gives perturbations that cut the error on one fixed signal far more than around random inits."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from thickets.cli.commands import main
from thickets.toy.experiment import (
    REGIMES,
    ToyConfig,
    best_sigma,
    mse,
    n_params,
    randopt,
    regimes_for,
    rollout,
    standard_directions,
    target_signals,
)
from thickets.toy.report import specific_cells, summary


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    assert main(["--quiet", "toy", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _by_group(rows):
    return {r["group"]: r for r in rows}


def test_mixed_pretraining_gives_far_larger_gains_on_a_fixed_signal_than_random_inits(quick):
    _, r = quick
    rows = _by_group(summary(r, specific_only=True))
    mixed, held_out, none = rows["mixed"], rows["mixed, family held out"], rows["none"]
    assert mixed["best_over_base"] < 0.5 * none["best_over_base"]
    assert held_out["best_over_base"] < 0.5 * none["best_over_base"]
    assert mixed["density_gain"] > 3 * none["density_gain"]
    # Xavier and orthogonal inits: no perturbation gains 1.5x on a zero-mean fixed signal
    for c in r["cells"]:
        if c["regime"] in ("none/xavier", "none/orthogonal") and c["target"] in ("one sinusoid", "one square"):
            assert c["best_mse"] > c["base_mse"] / 1.5, c


def test_quick_grid_covers_every_regime_and_target_and_writes_figures(quick):
    out, r = quick
    regimes = {c["regime"] for c in r["cells"]}
    assert regimes == {*REGIMES, "mixed/held-out"}
    held_out = [c for c in r["cells"] if c["regime"] == "mixed/held-out"]
    assert {c["target"] for c in held_out} == {"line(-0.25)", "one sinusoid", "one square"}
    assert all(not c["in_family"] for c in held_out)
    assert len(r["cells"]) == 7 * 9 + 3
    grid = r["config"]["sigmas"]
    for c in r["cells"]:
        assert [s["sigma"] for s in c["sweep"]] == grid
        assert c["sigma"] in grid and c == {**c, **best_sigma(c["sweep"])}
        assert 0 <= c["density_gain"] <= c["density"] <= 1 and 0 <= c["density_level"] <= 1
    assert len(specific_cells(r)) == 8 * 3
    for name in ("density.png", "sigma_sweep.png", "rollouts_one_sinusoid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_cell_is_reported_at_the_sigma_with_the_most_substantial_gains():
    sweep = [
        {"sigma": 1e-3, "density_gain": 0.1, "best_mse": 0.2},
        {"sigma": 1e-2, "density_gain": 0.3, "best_mse": 0.5},
        {"sigma": 1e-1, "density_gain": 0.3, "best_mse": 0.4},
    ]
    assert best_sigma(sweep)["sigma"] == 1e-1  # most gains; the tie goes to the better best
    none_gain = [{"sigma": s, "density_gain": 0.0, "best_mse": e} for s, e in ((1e-3, 0.9), (1e-2, 0.7))]
    assert best_sigma(none_gain)["sigma"] == 1e-2


def test_held_out_regime_is_pretrained_without_the_targets_family():
    regimes = regimes_for("one sinusoid", REGIMES)
    assert "sinusoid" in regimes["mixed"] and "sinusoid" not in regimes["mixed/held-out"]
    assert set(regimes["mixed"]) - set(regimes["mixed/held-out"]) == {"sinusoid"}
    assert regimes_for("family/sinusoid", REGIMES) == REGIMES


def test_randopt_figures_are_what_they_say():
    cfg = ToyConfig.quick(population=40, top_k=5)
    base = torch.zeros(n_params(cfg))
    signals = target_signals(cfg, "one sinusoid")
    eps = standard_directions(cfg, 40)
    assert torch.equal(eps, standard_directions(cfg, 40))  # the same seeds give the same directions
    r = randopt(cfg, base, signals, eps, 0.05)
    err = mse(rollout(cfg, base[None] + 0.05 * eps, signals), signals)
    assert r["best_mse"] == pytest.approx(float(err.min()))
    assert r["density"] == pytest.approx(float((err < r["base_mse"]).float().mean()))
    assert r["density_gain"] == pytest.approx(float((err <= r["base_mse"] / cfg.gain).float().mean()))
    assert r["density_level"] == pytest.approx(float((err <= cfg.level).float().mean()))
    at_median = randopt(replace(cfg, level=float(err.sort().values[19])), base, signals, eps, 0.05)
    assert at_median["density_level"] == 0.5  # 20 of the 40 errors are at most the 20th smallest
    top = torch.argsort(err)[:5]
    mean_rollout = rollout(cfg, base[None] + 0.05 * eps[top], signals).mean(0, keepdim=True)
    assert r["topk_mse"] == pytest.approx(float(mse(mean_rollout, signals)[0]), rel=1e-5)
    assert np.isfinite(r["median_mse"])


def test_bad_toy_input(tmp_path, capsys):
    assert main(["toy", "--population", "0"]) == 2
    assert "--population must be at least 1" in capsys.readouterr().err
    assert main(["toy", "--sigmas", "0.01,-1"]) == 2
    assert "--sigmas must be positive" in capsys.readouterr().err
    assert main(["toy", "--gain", "1"]) == 2
    assert "--gain must be a number above 1" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["toy", "--quick", "--out", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
