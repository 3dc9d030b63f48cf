"""The run store against odd names, kills inside a commit, full disks, damage and bad input.

Every bad input is one line on stderr, exit status 2, quickly, and the run folder untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import CLI, cli_env, search_argv
from thickets.cli.commands import main
from thickets.randopt.store import DB_NAME, RunStore


def args(model, run_dir, *extra, **sizes):
    return ["--quiet", *search_argv(model, run_dir, *extra, **sizes)]


def snapshot(path: Path):
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("thickets: error: "), err
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults") / "run"
    assert main(args(tiny_model_dir, folder)) == 0
    return folder


# -- names ----------------------------------------------------------------------------------------


def test_any_folder_name_is_its_own_run(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args(tiny_model_dir, "exp#1")) == 0
    assert main(args(tiny_model_dir, "exp#2", "--seed", "5")) == 0  # another config: another run
    assert main(args(tiny_model_dir, "%41 a?b=c")) == 0
    assert not Path("exp").exists() and not Path("A a").exists()
    for name, seed in (("exp#1", 0), ("exp#2", 5)):
        with sqlite3.connect(Path(name) / DB_NAME) as con:
            assert json.loads(con.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])["seed"] == seed
    assert (Path("%41 a?b=c") / DB_NAME).is_file()


# -- a kill inside a commit ---------------------------------------------------------------------------

KILL_IN_COMMIT = """
import os, signal, sys
from thickets.randopt.store import RunStore
with RunStore.open(sys.argv[1]) as store:
    store.con.execute("PRAGMA cache_size=1")  # spill every page to the file before the commit
    store.con.execute("BEGIN IMMEDIATE")
    for i in range(5000):
        store.con.execute(
            "INSERT INTO results (model, split, example, example_id, completion, answer, vote_key, reward, correct) "
            "VALUES ('cand:99', 'val', ?, 'x', ?, NULL, NULL, 0, 0)",
            (i, 'y' * 200),
        )
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_inside_a_commit_still_resumes_ensembles_and_exports(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "run"
    assert main(args(tiny_model_dir, folder)) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_IN_COMMIT, str(folder)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert (folder / f"{DB_NAME}-journal").stat().st_size > 0  # a hot journal, as a kill -9 leaves it
    assert main(["--quiet", "export", "--run-dir", str(folder), "--out", str(tmp_path / "m")]) == 0
    assert main(["--quiet", "analyze", "--run-dir", str(folder), "--no-map"]) == 0
    assert main(["--quiet", "ensemble", "--run-dir", str(folder), "--top-k", "1", "--test-size", "2"]) == 0
    assert main(args(tiny_model_dir, folder, population="3")) == 0
    with RunStore.open(folder, write=False) as store:
        assert len(store.candidates()) == 3 and store.scores("cand:99", "val") == {}  # the torn write is gone


# -- a full disk --------------------------------------------------------------------------------------

FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
size = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
import tests.support  # the test tasks
from thickets.cli.commands import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_is_one_line_and_keeps_what_was_finished(tmp_path, tiny_model_dir):
    folder = tmp_path / "run"
    assert main(args(tiny_model_dir, folder)) == 0
    size = (folder / DB_NAME).stat().st_size // 2  # past this offset no write lands: the disk is full
    code = FULL_DISK
    r = subprocess.run(
        [sys.executable, "-c", code, str(size), *args(tiny_model_dir, folder, population="30")],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the run store" in lines[0], r.stderr[-500:]  # "full" or "disk I/O error"
    with RunStore.open(folder, write=False) as store:
        done = store.candidates()
    assert 2 <= len(done) < 30 and all(c.complete for c in done)
    assert main(args(tiny_model_dir, folder, population="30")) == 0  # the same command resumes once there is room


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------


def test_a_run_dir_that_is_a_file_or_holds_a_folder_for_its_database(tmp_path, tiny_model_dir, capsys):
    file = tmp_path / "file"
    file.write_text("not a run")
    assert main(args(tiny_model_dir, file)) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert file.read_text() == "not a run"
    (tmp_path / "odd" / DB_NAME).mkdir(parents=True)
    assert main(args(tiny_model_dir, tmp_path / "odd")) == 2
    one_line_error(capsys, "is not a file")
    assert main(["--quiet", "ensemble", "--run-dir", str(file), "--top-k", "1"]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_a_damaged_database_is_refused_before_anything_is_generated(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "run"
    assert main(args(tiny_model_dir, folder)) == 0
    db = folder / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    last = len(data) // page - 1  # a page the first read (the config) does not reach
    data[last * page : last * page + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    before = snapshot(folder)
    for argv in (
        args(tiny_model_dir, folder, population="3"),
        ["--quiet", "ensemble", "--run-dir", str(folder), "--top-k", "1", "--test-size", "2"],
        ["--quiet", "export", "--run-dir", str(folder), "--out", str(tmp_path / "m")],
    ):
        assert main(argv) == 2
        one_line_error(capsys, "damaged")
    assert snapshot(folder) == before


def test_a_smaller_population_is_refused(run, tiny_model_dir, capsys):
    before = snapshot(run)
    assert main(args(tiny_model_dir, run, population="1")) == 2
    one_line_error(capsys, "population 1 is smaller than the 2 this run already has")
    assert snapshot(run) == before


@pytest.mark.timeout(120)  # a hang guard: a huge split must be refused, not built
@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--max-new-tokens", str(10**9)], "max-new-tokens must be between 1 and"),
        (["--max-new-tokens", "100000"], "exceeds the model's context of 512 tokens"),
        (["--val-size", str(10**9)], "val-size must be between 1 and 100,000"),
        (["--seed", "-1"], "seed must be in [0, 2**62)"),
        (["--sigma", "inf"], "sigma must be a positive, finite number"),
        (["--sigma", "nan"], "sigma must be a positive, finite number"),
        (["--batch-size", "100000000"], "batch-size must be between 1 and"),
        (["--reward-timeout", "0"], "reward-timeout must be a positive number"),
    ],
)
def test_bad_numbers_are_refused_before_the_store_is_made(tmp_path, tiny_model_dir, capsys, extra, fragment):
    assert main(args(tiny_model_dir, tmp_path / "fresh", *extra)) == 2
    one_line_error(capsys, fragment)
    assert not (tmp_path / "fresh").exists()


def test_a_huge_population_starts_at_once_or_is_bounded(tmp_path, tiny_model_dir, capsys):
    assert main(args(tiny_model_dir, tmp_path / "fresh", population=str(10**12))) == 2
    one_line_error(capsys, "population must be between 1 and 1,000,000,000")
    assert not (tmp_path / "fresh").exists()


def test_a_huge_test_split_is_refused(run, capsys):
    assert main(["--quiet", "ensemble", "--run-dir", str(run), "--top-k", "1", "--test-size", str(10**9)]) == 2
    one_line_error(capsys, "test-size must be between 1 and 100,000")


def test_a_prompt_far_beyond_the_context_is_refused_before_tokenizing(tmp_path, tiny_model_dir, capsys):
    rows = [{"question": "q" * (40 << 20) if i == 1 else f"q{i}", "answer": "#### 1"} for i in range(4)]
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args(tiny_model_dir, tmp_path / "fresh", "--val-size", "4", task=f"gsm8k:{data}")) == 2
    one_line_error(capsys, "-character prompt, far beyond the model's context of 512 tokens")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'{"question": "caf\xe9", "answer": "#### 1"}\n', "big.jsonl:1 is not UTF-8 text (byte 0xe9"),
        ("\ufeff" + '{"question": "q", "answer": "#### 1"}\n' * 1, None),  # a UTF-8 byte-order mark is fine
        ('{"question": "q", "answer": "#### 1"}\n'.encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
        (bytes(range(256)) * 4, "is not UTF-8 text"),
    ],
)
def test_data_files_that_are_not_utf8(tmp_path, tiny_model_dir, capsys, content, fragment):
    data = tmp_path / "big.jsonl"
    data.write_bytes(content.encode() if isinstance(content, str) else content)
    code = main(args(tiny_model_dir, tmp_path / "fresh", "--val-size", "1", task=f"gsm8k:{data}"))
    if fragment is None:
        assert code == 0
        return
    assert code == 2
    one_line_error(capsys, fragment)
    assert not (tmp_path / "fresh").exists()


def test_a_split_of_a_single_file_is_refused(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    assert main(args(tiny_model_dir, tmp_path / "fresh", "--val-size", "1", task=f"gsm8k:{data}#train")) == 2
    one_line_error(capsys, "only a folder saved by datasets has splits")


def test_export_and_replay_bad_input(run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["export", "--run-dir", str(run), "--out", str(blocker / "model")], "is a file, not a folder"),
        (["export", "--seed", "-1", "--sigma", "0.01", "--out", str(tmp_path / "m")], "seed must be an integer"),
        (["export", "--seed", "1", "--sigma", "inf", "--out", str(tmp_path / "m")], "sigma must be a positive"),
        (["race-replay", "--run-dir", str(run), "--chunk", "0"], "--chunk must be at least 1"),
        (["race-replay", "--run-dir", str(run), "--orders", "0"], "--orders must be at least 1"),
    ]
    before = snapshot(run)
    for argv, fragment in cases:
        assert main(["--quiet", *argv]) == 2, argv
        one_line_error(capsys, fragment)
    assert snapshot(run) == before and not (tmp_path / "m").exists()


@pytest.mark.timeout(120)  # a hang guard: refused at once, never minutes of retries
def test_ray_asked_for_more_than_there_is_or_an_unreachable_cluster(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("ray")
    many = str((os.cpu_count() or 1) + 98)
    assert main(args(tiny_model_dir, tmp_path / "fresh", "--executor", "ray", "--workers", many)) == 2
    one_line_error(capsys, f"--workers {many} is more than the")
    assert main(args(tiny_model_dir, tmp_path / "fresh", "--executor", "ray", "--address", "127.0.0.1:9")) == 2
    one_line_error(capsys, "cannot reach a Ray cluster at 127.0.0.1:9")
    assert not (tmp_path / "fresh").exists()


# -- read-only run folders ----------------------------------------------------------------------------

READ_ONLY = """set -e
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
shift
exec "$@"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare for a read-only bind mount (root ignores file modes)",
)
def test_a_read_only_run_folder_is_refused_before_generating(run, tmp_path):
    before = snapshot(run)
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            READ_ONLY,
            "sh",
            str(run),
            *CLI,
            "--quiet",
            "ensemble",
            "--run-dir",
            str(run),
            "--top-k",
            "1",
            "--test-size",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert r.returncode == 2, r.stderr[-1000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("read-only" in lines[0] or "cannot write" in lines[0]), r.stderr
    assert snapshot(run) == before
