import hashlib
import subprocess
from pathlib import Path

import pytest
import torch

from tests.support import CLI, cli_env
from thickets.cli.commands import main


def _search_args(model, run_dir, **over):
    opts = {
        "--model": str(model),
        "--task": "toy",
        "--population": "2",
        "--sigma": "0.05",
        "--val-size": "3",
        "--max-new-tokens": "4",
        "--run-dir": str(run_dir),
    }
    opts.update(over)
    return ["--quiet", "search", *[x for kv in opts.items() for x in kv]]


def _snapshot(run_dir: Path):
    return (
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}
        if run_dir.exists()
        else None
    )


@pytest.fixture(scope="module")
def existing_run(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(_search_args(tiny_model_dir, run)) == 0
    return run


BAD = {
    "missing model": ({"--model": "/nonexistent/model"}, "model not found: /nonexistent/model"),
    "unknown task": ({"--task": "nope"}, "unknown task 'nope'"),
    "empty split": ({"--task": "small", "--val-size": "10"}, "task small has only 5 distinct examples"),
    "zero sigma": ({"--sigma": "0"}, "sigma must be a positive, finite number"),
    "negative sigma": ({"--sigma": "0.01,-1"}, "sigma must be a positive, finite number"),
    "sigma not a number": ({"--sigma": "abc"}, "--sigma must be numbers"),
    "zero population": ({"--population": "0"}, "population must be between 1 and"),
    "lowrank without a rank": ({"--noise": "lowrank"}, "--noise lowrank needs --rank R of at least 1, got 0"),
    "negative rank": ({"--noise": "lowrank", "--rank": "-2"}, "needs --rank R of at least 1, got -2"),
    "rank without lowrank": ({"--rank": "4"}, "--rank is for --noise lowrank"),
    # the tiny model's smallest matrix side is 16 (k_proj: 2 key/value heads of 8)
    "rank above a matrix side": ({"--noise": "lowrank", "--rank": "17"}, "rank 17 is above the smaller side of"),
    "lowrank on vllm": ({"--noise": "lowrank", "--rank": "2", "--engine": "vllm"}, "cannot make low-rank experts"),
    "relative on vllm": ({"--noise": "relative", "--engine": "vllm"}, "vllm engine cannot make relative noise"),
    "relative with a rank": ({"--noise": "relative", "--rank": "2"}, "--rank is for --noise lowrank"),
    "relative in a population batch": (
        {"--noise": "relative", "--population-batch": "4"},
        "--population-batch needs low-rank candidates",
    ),
    "unknown noise": ({"--noise": "uniform"}, "invalid choice: 'uniform'"),
}
if not torch.cuda.is_available():
    BAD["cuda without cuda"] = ({"--device": "cuda"}, "--device cuda, but torch sees no CUDA device here")


@pytest.mark.parametrize("case", BAD)
def test_bad_search_input_is_one_line_exit_2_and_no_run_folder_is_made(case, tiny_model_dir, tmp_path, capsys):
    over, message = BAD[case]
    assert main(_search_args(tiny_model_dir, tmp_path / "fresh", **over)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("over", [{"--val-size": "5"}, {"--sigma": "0.01"}, {"--model": "/nonexistent"}])
def test_another_config_on_an_existing_run_is_refused_and_the_store_untouched(
    over, existing_run, tiny_model_dir, capsys
):
    before = _snapshot(existing_run)
    assert main(_search_args(tiny_model_dir, existing_run, **over)) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a run with another config" in err and len(err.splitlines()) == 1, err
    assert _snapshot(existing_run) == before


def test_corrupt_gguf_is_reported_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00\x01garbage" * 100)
    env = cli_env(THICKETS_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([*CLI, *_search_args(bad, tmp_path / "run")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("thickets: error: cannot read GGUF file") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert not list((tmp_path / "cache" / "models").glob("*")) if (tmp_path / "cache" / "models").exists() else True


def test_ensemble_and_export_bad_input(existing_run, tmp_path, capsys):
    before = _snapshot(existing_run)
    cases = [
        (
            ["ensemble", "--run-dir", str(existing_run), "--top-k", "5", "--test-size", "3"],
            "top-k 5 is more than the 2",
        ),
        (
            ["ensemble", "--run-dir", str(existing_run), "--top-k", "1", "--test-size", "0"],
            "test-size must be between 1 and",
        ),
        (["ensemble", "--run-dir", str(tmp_path / "none"), "--top-k", "1"], "no thickets run in"),
        (
            ["export", "--run-dir", str(existing_run), "--rank", "3", "--out", str(tmp_path / "o")],
            "rank must be between 1 and 2",
        ),
        (["export", "--seed", "1", "--out", str(tmp_path / "o")], "export needs --run-dir"),
    ]
    for argv, message in cases:
        assert main(["--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert _snapshot(existing_run) == before
    assert not (tmp_path / "none").exists() and not (tmp_path / "o").exists()


def test_tasks_lists_builtin_and_gym_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "countdown" in out and "gym:basic_arithmetic" in out


def test_a_gguf_with_a_good_header_but_corrupt_body_is_one_line_too(tmp_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    env = cli_env(THICKETS_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([*CLI, *_search_args(bad, tmp_path / "run")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("thickets: error: cannot read GGUF file") and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def _score_countdown(completion_file, capsys) -> dict:
    import json

    example = '{"numbers": [3, 5, 7], "target": 6}'
    assert main(["score", "--task", "countdown", "--example", example, "--completion-file", str(completion_file)]) == 0
    return json.loads(capsys.readouterr().out)


def test_score_explains_a_reward_and_survives_an_exponent_bomb(tmp_path, capsys):
    f = tmp_path / "c.txt"
    f.write_text("<think>easy</think><answer>(7 - 5) * 3 + 0 * 9**9**9**9</answer>")
    out = _score_countdown(f, capsys)
    assert out["reward"] == 0.1 and out["correct"] is False and out["vote_key"] is None
    f.write_text("<answer>(7 - 5) * 3</answer>")
    out = _score_countdown(f, capsys)
    assert out == {
        "task": "countdown",
        "answer": "(7 - 5) * 3",
        "vote_key": "3,5,7=6",
        "extracted": True,
        "reward": 1.1,
        "correct": True,
    }
    assert main(["score", "--task", "countdown", "--example", '{"numbers": [3]', "--completion-file", str(f)]) == 2
    assert "--example is not valid JSON" in capsys.readouterr().err
    assert main(["score", "--task", "countdown", "--example", '{"target": 6}', "--completion-file", str(f)]) == 2
    assert "lacks the field 'numbers'" in capsys.readouterr().err


def test_export_from_the_command_line_by_rank_and_by_seed(existing_run, tiny_model_dir, tmp_path, capsys):
    import json

    assert main(["export", "--run-dir", str(existing_run), "--rank", "2", "--out", str(tmp_path / "r2")]) == 0
    recipe = json.loads((tmp_path / "r2" / "thickets_recipe.json").read_text())
    assert recipe["run"]["rank"] == 2 and (tmp_path / "r2" / "model.safetensors").exists()
    assert (
        main(
            [
                "export",
                "--model",
                str(tiny_model_dir),
                "--seed",
                str(recipe["seed"]),
                "--sigma",
                str(recipe["sigma"]),
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == (tmp_path / "r2" / "model.safetensors").read_bytes()


def test_bad_distill_input_is_one_line_exit_2_and_the_run_folder_untouched(existing_run, tmp_path, capsys):
    before = _snapshot(existing_run)
    d = ["distill", "--run-dir", str(existing_run)]
    cases = [
        ([*d, "--rounds", "0"], "--rounds must be a number from 1 to 100, got 0"),
        ([*d, "--top-k", "50"], "top-k 50 is more than the run's population of"),
        ([*d, "--test-size", "0"], "--test-size must be a number from 1 to"),
        ([*d, "--samples", "4", "--temperature", "0"], "sampling (--samples) needs a positive --temperature"),
        ([*d, "--filter", "maybe"], "invalid choice: 'maybe'"),
        (["distill", "--run-dir", str(tmp_path / "none")], "no thickets run in"),
    ]
    for argv, message in cases:
        assert main(["--quiet", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert _snapshot(existing_run) == before
    assert not (existing_run / "distill").exists()
