"""`--sigma auto` and `thickets calibrate` from the command line: the pilot's table and choice, a search
going on from a calibrated folder, analyze and ensemble mentioning the choice, and bad input refused."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.support import search_argv
from thickets.cli.commands import main
from thickets.randopt.store import CALIBRATION_FILE, DB_NAME

PILOT = ["--pilot-grid", "0.001,0.003,0.01", "--pilot-per-sigma", "2"]


def _common(model, run_dir):
    return [
        "--model",
        str(model),
        "--task",
        "toy",
        "--val-size",
        "4",
        "--max-new-tokens",
        "3",
        "--seed",
        "5",
        "--run-dir",
        str(run_dir),
        *PILOT,
    ]


def test_calibrate_then_search_then_analyze_and_ensemble(tiny_model_dir, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("THICKETS_PROGRESS_SECONDS", "0")
    assert main(["calibrate", *_common(tiny_model_dir, run)]) == 0
    out, err = capsys.readouterr()
    assert "pilot of --sigma auto" in out and "chosen by the density rule from a pilot of 6 candidates" in out
    assert "search --run-dir" in out
    bar = [line for line in err.splitlines() if line.startswith("calibrate ")]
    assert any("pilot=0.003(2/3)" in line for line in bar), bar  # the bar shows the pilot's grid point
    record = json.loads((run / CALIBRATION_FILE).read_text())
    chosen = record["chosen"][0]

    assert main(["search", *_common(tiny_model_dir, run), "--sigma", "auto", "--population", "8"]) == 0
    out, err = capsys.readouterr()
    assert "pilot of --sigma auto" in out and "best of 8 candidates" in out
    assert any(f"sigma=auto:{chosen:g}" in line for line in err.splitlines() if line.startswith("search "))
    with sqlite3.connect(run / DB_NAME) as con:
        sigmas = [r[0] for r in con.execute("SELECT sigma FROM candidates ORDER BY idx")]
    assert sigmas == [0.001, 0.001, 0.003, 0.003, 0.01, 0.01, chosen, chosen]

    assert main(["--quiet", "analyze", "--run-dir", str(run), "--no-map"]) == 0
    out = capsys.readouterr().out
    assert "pilot of --sigma auto" in out and (run / "analysis" / "pilot.png").is_file()
    assert "Sigma chosen automatically" in (run / "report.html").read_text()
    assert main(["--quiet", "ensemble", "--run-dir", str(run), "--top-k", "1", "--test-size", "2"]) == 0
    capsys.readouterr()
    assert f"Sigma auto: {chosen:g} chosen by the density rule" in (run / "report.md").read_text()
    assert json.loads((run / "report.json").read_text())["sigma_auto"]["chosen"] == [chosen]


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("search", ["--sigma", "auto", "--population", "5"], "smaller than the pilot of --sigma auto"),
        ("search", ["--sigma", "auto", "--pilot-grid", "0.01,0.001"], "--pilot-grid must be increasing"),
        ("search", ["--sigma", "auto", "--pilot-grid", ","], "--pilot-grid needs at least one sigma"),
        ("search", ["--sigma", "auto", "--pilot-rule", "best"], "invalid choice: 'best'"),
        ("search", ["--sigma", ""], "--sigma must be a number, a grid a,b,c or auto"),
        ("calibrate", ["--sigma", "0.01"], "calibrate chooses sigma itself"),
        ("calibrate", ["--pilot-keep", "4"], "--pilot-keep must be between 1 and the grid's 3 sigmas"),
    ],
)
def test_bad_sigma_auto_input_is_one_line_exit_2_and_nothing_is_written(
    command, extra, message, tiny_model_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = search_argv(tiny_model_dir, run) if command == "search" else ["calibrate", *_common(tiny_model_dir, run)]
    assert main(["--quiet", *argv, *PILOT, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run.exists()
