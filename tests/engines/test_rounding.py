"""Half precision made visible (issue 25): what rounding to bf16/fp16 leaves of a perturbation is measured
before a run, the same quantity the engine's weights show, recorded in the run and warned about."""

from __future__ import annotations

import pytest

from thickets.engines import load_engine
from thickets.engines.rounding import group_of, rounding_record, rounding_survival, rounding_warning
from thickets.noise import NOISE_VERSION, PerturbationSpec


def test_groups_gather_every_layers_copy():
    assert group_of("model.layers.11.mlp.down_proj.weight") == "model.layers.*.mlp.down_proj.weight"
    assert group_of("model.layers.0.block_sparse_moe.experts.3.w1.weight") == (
        "model.layers.*.block_sparse_moe.experts.*.w1.weight"
    )
    assert group_of("model.embed_tokens.weight") == "model.embed_tokens.weight"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_measured_share_is_what_the_engine_weights_show(tiny_model_dir, dtype):
    """The entries that moved, measured from the weights files, are the entries the engine's perturbed weights
    moved: the same noise, added in float32 and rounded once."""
    spec = PerturbationSpec(seed=7, sigma=0.02)
    (row,) = rounding_survival(tiny_model_dir, [spec], dtype)
    engine, _ = load_engine(str(tiny_model_dir), dtype=dtype)
    before = {n: p.detach().clone() for n, p in engine.params.items()}
    engine.perturb(spec)
    moved: dict[str, list[int]] = {}
    for name, p in engine.params.items():
        m = moved.setdefault(group_of(name), [0, 0])
        m[0] += int((p.detach().reshape(-1) != before[name].reshape(-1)).sum())
        m[1] += p.numel()
    engine.restore()
    assert set(row["groups"]) == set(moved)
    for group, (changed, n) in moved.items():
        assert row["groups"][group]["entries"] == n  # the tiny model's tensors are whole in the sample
        assert row["groups"][group]["changed"] == pytest.approx(changed / n, abs=1e-9), group


def test_a_small_sigma_is_mostly_rounded_away_and_warned_a_large_one_is_kept(tiny_model_dir):
    small, large = PerturbationSpec(seed=1, sigma=1e-5), PerturbationSpec(seed=1, sigma=1.0)
    record = rounding_record(tiny_model_dir, [small, large], "bfloat16")
    assert record is not None
    by_sigma = {row["sigma"]: row["groups"] for row in record["sigmas"]}
    assert max(g["kept"] for g in by_sigma[1e-5].values()) < 0.2
    assert min(g["kept"] for g in by_sigma[1.0].values()) > 0.95
    line = rounding_warning(record)
    assert line is not None and "sigma 1e-05" in line and "\n" not in line
    assert rounding_warning(rounding_record(tiny_model_dir, [large], "bfloat16")) is None
    # nothing to measure in float32, or for a low-rank expert applied unmerged
    assert rounding_record(tiny_model_dir, [small], "float32") is None
    lowrank = PerturbationSpec(seed=1, sigma=1e-5, strategy="lowrank", rank=2, version=NOISE_VERSION)
    assert NOISE_VERSION >= 3 and rounding_record(tiny_model_dir, [lowrank], "bfloat16") is None


def test_a_checkpoint_stored_under_other_names_is_said_to_be_unmeasured(tmp_path):
    """Qwen2-VL stores `visual.*` and `model.layers.*` and loads them as `model.visual.*` and
    `model.language_model.*`: the noise goes by the loaded names, so those tensors are not measured, and
    the run says so instead of keeping quiet."""
    from tests.support import make_tiny_vlm

    folder = make_tiny_vlm(tmp_path / "qwen2_vl", "qwen2_vl")
    record = rounding_record(folder, [PerturbationSpec(seed=1, sigma=1e-5)], "bfloat16")
    measured = set(record["sigmas"][0]["groups"])
    assert not any(g.startswith(("model.language_model", "model.visual", "visual.")) for g in measured)
    if not measured:
        assert "not measured" in rounding_warning(record)


def test_a_half_precision_run_records_it_and_analyze_shows_it(tiny_model_dir, tmp_path, capsys, caplog):
    from tests.support import search_argv
    from thickets.cli.commands import main

    run = tmp_path / "run"
    argv = search_argv(tiny_model_dir, run, "--dtype", "bfloat16", sigma="1e-5", val_size=2, max_new_tokens=2)
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert any("rounding leaves" in r.getMessage() for r in caplog.records)
    assert main(["analyze", "--run-dir", str(run), "--no-map"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16: share of the perturbation" in out and "model.layers.*.mlp.down_proj.weight" in out
    assert "What bfloat16 rounding leaves of the perturbation" in (run / "report.html").read_text()
