"""The 1D signal experiment: the quick grid reproduces the paper's ordering of densities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thickets.cli.commands import main
from thickets.toy.experiment import (
    ToyConfig,
    mse,
    n_params,
    randopt,
    rollout,
    standard_directions,
    target_signals,
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    assert main(["--quiet", "toy", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _mean(cells, pick):
    return float(np.mean([c["density_margin"] for c in cells if pick(c)]))


def test_mixed_pretraining_makes_improving_perturbations_densest(quick):
    _, r = quick
    cells = r["cells"]
    mixed = _mean(cells, lambda c: c["regime"] == "mixed")
    none = _mean(cells, lambda c: c["regime"].startswith("none/"))
    single_out = _mean(cells, lambda c: c["regime"].startswith("single/") and not c["in_family"])
    assert mixed > none
    assert mixed > single_out


def test_quick_grid_covers_every_regime_and_target_and_writes_figures(quick):
    out, r = quick
    regimes = {c["regime"] for c in r["cells"]}
    assert regimes == {
        "none/xavier",
        "none/kaiming",
        "none/orthogonal",
        "single/line",
        "single/sinusoid",
        "single/square",
        "mixed",
    }
    assert len(r["cells"]) == 7 * 9
    for c in r["cells"]:
        assert c["best_mse"] <= min(s["best_mse"] for s in c["sweep"] if s["sigma"] == c["sigma"]) + 1e-9
        assert 0 <= c["density_margin"] <= c["density"] <= 1
    for name in ("density.png", "sigma_sweep.png", "rollouts_one_sinusoid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    top = torch.argsort(err)[:5]
    mean_rollout = rollout(cfg, base[None] + 0.05 * eps[top], signals).mean(0, keepdim=True)
    assert r["topk_mse"] == pytest.approx(float(mse(mean_rollout, signals)[0]), rel=1e-5)


def test_bad_toy_input(tmp_path, capsys):
    assert main(["toy", "--population", "0"]) == 2
    assert "--population must be at least 1" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["toy", "--quick", "--out", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
