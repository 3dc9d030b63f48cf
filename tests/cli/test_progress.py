"""A cluster job's log shows progress: plain lines when the output is not a terminal."""

from __future__ import annotations

import subprocess

from tests.support import CLI, cli_env, search_argv


def test_search_and_ensemble_print_plain_progress_lines_into_a_log(tiny_model_dir, tmp_path):
    log = tmp_path / "job.log"
    env = cli_env(THICKETS_PROGRESS_SECONDS="0")
    run = str(tmp_path / "run")
    with open(log, "w") as out:
        for argv in (
            search_argv(tiny_model_dir, run, population=3),
            ["ensemble", "--run-dir", run, "--top-k", "1", "--test-size", "2"],
        ):
            assert subprocess.run([*CLI, *argv], stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0
    lines = log.read_text().splitlines()
    search = [line for line in lines if line.startswith("search ")]
    assert search[0].startswith("search 0/3 (0%)") and search[-1].startswith("search 3/3 (100%)")
    assert any("base=" in line and "best=" in line and "elapsed" in line for line in search)
    assert any(line.startswith("test answers 2/2") for line in lines)
    assert not any("\x1b[" in line for line in lines)  # no terminal control codes in a log


def test_the_interval_keeps_a_log_short(tiny_model_dir, tmp_path):
    env = cli_env(THICKETS_PROGRESS_SECONDS="3600")
    r = subprocess.run(
        [*CLI, *search_argv(tiny_model_dir, tmp_path / "run", population=4)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0
    search = [line for line in r.stderr.splitlines() if line.startswith("search ")]
    assert len(search) == 2 and search[0].startswith("search 0/4") and search[1].startswith("search 4/4")
