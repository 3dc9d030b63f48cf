"""A distillation's settings belong to its rounds, and every numeric flag is bounded (issue 32): each case
is refused in one line with exit status 2, before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from thickets.cli.commands import main
from thickets.distill.config import DistillConfig
from thickets.distill.rounds import check_settings, distill
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search

SMALL = dict(top_k=2, train_size=6, test_size=5, learning_rate=1e-3, lora_r=4, epochs=1.0, train_batch_size=4)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def distilled(tiny_model_dir, tmp_path_factory):
    """A run with one finished distillation round, made with --top-k 2 --lora-r 4."""
    run = tmp_path_factory.mktemp("distilled") / "run"
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=4, sigmas=(0.1,), val_size=4, max_new_tokens=4
    )
    search(config, run, progress=False)
    distill(run, DistillConfig(rounds=1, **SMALL), progress=False)
    return run


def _refused(argv: list[str], capsys, *contains: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in contains:
        assert text in err, err
    return err


def test_a_rerun_with_other_settings_is_refused_naming_the_fields(distilled, capsys):
    before = _tree(distilled)
    argv = ["distill", "--run-dir", str(distilled), "--rounds", "1", "--top-k", "4", "--lora-r", "64"]
    err = _refused(argv + ["--learning-rate", "3e-4"], capsys, "top_k 2", "top_k 4", "lora_r 4", "lora_r 64")
    assert "learning_rate 0.001" in err and "learning_rate 0.0003" in err and "--distillation NAME" in err
    assert _tree(distilled) == before


def test_the_same_settings_resume_and_another_distillation_starts_beside(distilled, tmp_path):
    check_settings(distilled / "distill", DistillConfig(rounds=3, **SMALL))  # more rounds: an extension
    record = json.loads((distilled / "distill" / "round-1" / "round.json").read_text())
    assert json.loads((distilled / "distill" / "round-1" / "settings.json").read_text()) == {
        k: v for k, v in record["config"].items() if k not in ("rounds", "name")
    }
    check_settings(distilled / "other", DistillConfig(rounds=1, **{**SMALL, "top_k": 3}))  # a new folder: free


def test_a_round_killed_before_its_record_keeps_its_settings(tmp_path):
    """settings.json is written before a round's first trace, so a half-made round refuses other settings too."""
    folder = tmp_path / "distill" / "round-1"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(DistillConfig(**SMALL).round_settings()))
    (folder / "traces-1.jsonl").write_text("")
    check_settings(tmp_path / "distill", DistillConfig(**SMALL))
    from thickets.errors import ThicketsError

    with pytest.raises(ThicketsError, match=r"samples 0.*samples 2"):
        check_settings(tmp_path / "distill", DistillConfig(**{**SMALL, "samples": 2}))


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--epochs", "inf"], "--epochs"),
        (["--epochs", "1e9"], "--epochs"),
        (["--learning-rate", "inf"], "--learning-rate"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--temperature", "inf", "--samples", "2"], "--temperature"),
        (["--distillation", "../elsewhere"], "--distillation"),
    ],
)
def test_distill_flags_are_bounded(tiny_model_dir, tmp_path, capsys, flags, names):
    run = tmp_path / "run"  # a fresh run folder: nothing may be created in it
    _refused(["distill", "--run-dir", str(run), *flags], capsys, names)
    assert not run.exists()


@pytest.mark.parametrize(
    "command, flags, name",
    [
        ("es", ["--sigma", "inf"], "--sigma"),
        ("es", ["--alpha", "nan"], "--alpha"),
        ("es", ["--iterations", "1000000000"], "--iterations"),
        ("es", ["--seed", "-1"], "--seed"),
        ("grpo", ["--learning-rate", "inf"], "--learning-rate"),
        ("grpo", ["--steps", "1000000000"], "--steps"),
        ("grpo", ["--seed", str(2**64)], "--seed"),
        ("compare", ["--es-sigma", "inf"], "--es-sigma"),
        ("compare", ["--grpo-learning-rate", "nan"], "--grpo-learning-rate"),
        ("compare", ["--budget", str(10**15)], "--budget"),
        ("compare", ["--sigma", "inf"], "--sigma"),
        ("compare", ["--distill-search-share", "nan"], "--distill-search-share"),
    ],
)
def test_baseline_flags_are_bounded(tmp_path, capsys, command, flags, name):
    out = tmp_path / "out"
    folder = ["--run-dir", str(out)] if command == "es" else ["--out", str(out)]
    _refused([command, *folder, *flags], capsys, name)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, name",
    [
        (["--batch-window-ms", "inf"], "--batch-window-ms"),
        (["--graceful-shutdown-s", "nan"], "--graceful-shutdown-s"),
        (["--max-tokens-limit", "10000000000"], "--max-tokens-limit"),
        (["--top-k", "0"], "--top-k"),
        (["--port", "70000"], "--port"),
    ],
)
def test_serve_flags_are_bounded(distilled, capsys, flags, name):
    _refused(["serve", "--run-dir", str(distilled), *flags], capsys, name)
