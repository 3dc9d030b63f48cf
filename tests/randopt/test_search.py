import hashlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import CLI, cli_env
from thickets.errors import ThicketsError
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.randopt.store import DB_NAME


def _config(model, **kw):
    base = dict(
        model=str(model),
        task="toy",
        population=6,
        sigmas=(0.05, 0.1),
        val_size=6,
        max_new_tokens=6,
        batch_size=6,
        seed=3,
    )
    base.update(kw)
    return SearchConfig(**base)


def _rows(run_dir):
    con = sqlite3.connect(Path(run_dir) / DB_NAME)
    try:
        cands = con.execute("SELECT idx, seed, sigma, score FROM candidates ORDER BY idx").fetchall()
        per = con.execute("SELECT model, COUNT(*) FROM results WHERE split='val' GROUP BY model").fetchall()
    finally:
        con.close()
    return cands, dict(per)


def _key(ranked):
    return [(c.idx, c.seed, c.sigma, c.score, c.accuracy, c.format_rate) for c in ranked]


def _digest(run_dir):
    return hashlib.sha256((Path(run_dir) / DB_NAME).read_bytes()).hexdigest()


class CountingEngine:
    """Wraps an engine and counts candidate evaluations, to prove resume scores nothing twice."""

    def __init__(self, inner):
        self.inner, self.perturbs = inner, 0
        self.tokenizer = inner.tokenizer

    def perturb(self, spec):
        self.perturbs += 1
        self.inner.perturb(spec)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_search_stores_every_candidate_with_its_results_and_resumes_without_rescoring(
    tiny_engine, tiny_model_dir, tmp_path
):
    config = _config(tiny_model_dir)
    engine = CountingEngine(tiny_engine)
    result = search(config, tmp_path / "run", engine=engine, progress=False)
    assert engine.perturbs == 6
    cands, per = _rows(tmp_path / "run")
    assert [c[0] for c in cands] == list(range(6))
    assert len({c[1] for c in cands}) == 6
    assert [c[2] for c in cands] == [0.05, 0.1] * 3  # sigma grid in round robin, recorded per candidate
    assert per == {"base": 6, **{f"cand:{i}": 6 for i in range(6)}}
    assert len({c[3] for c in cands}) > 1, "the toy task should separate candidates"
    scores = [c.score for c in result.ranked]
    assert scores == sorted(scores, reverse=True)

    again = search(config, tmp_path / "run", engine=engine, progress=False)
    assert engine.perturbs == 6, "a finished candidate was scored again"
    assert _key(again.ranked) == _key(result.ranked)

    bigger = search(_config(tiny_model_dir, population=8), tmp_path / "run", engine=engine, progress=False)
    assert engine.perturbs == 8 and len(bigger.ranked) == 8


def test_a_different_config_on_an_existing_run_is_refused_without_touching_it(tiny_engine, tiny_model_dir, tmp_path):
    search(_config(tiny_model_dir, population=2), tmp_path / "run", engine=tiny_engine, progress=False)
    before = _digest(tmp_path / "run")
    with pytest.raises(ThicketsError, match=r"another config.*sigmas"):
        search(
            _config(tiny_model_dir, population=2, sigmas=(0.01,)), tmp_path / "run", engine=tiny_engine, progress=False
        )
    with pytest.raises(ThicketsError, match="val_size"):
        search(_config(tiny_model_dir, population=2, val_size=3), tmp_path / "run", engine=tiny_engine, progress=False)
    assert _digest(tmp_path / "run") == before


def test_scores_are_the_same_however_the_run_is_split(tiny_engine, tiny_model_dir, tmp_path):
    one = search(_config(tiny_model_dir), tmp_path / "a", engine=tiny_engine, progress=False)
    search(_config(tiny_model_dir, population=2), tmp_path / "b", engine=tiny_engine, progress=False)
    two = search(_config(tiny_model_dir), tmp_path / "b", engine=tiny_engine, progress=False)
    assert _key(one.ranked) == _key(two.ranked)


def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=cli_env(), **kw)


def test_a_search_killed_with_sigkill_resumes_to_exactly_n_candidates_with_the_same_scores(tiny_model_dir, tmp_path):
    n = 10
    args = [
        "--quiet",
        "search",
        "--model",
        str(tiny_model_dir),
        "--task",
        "toy",
        "--population",
        str(n),
        "--sigma",
        "0.05,0.1",
        "--val-size",
        "6",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "6",
        "--seed",
        "3",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*CLI, *args, "--run-dir", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        if (killed / DB_NAME).exists():
            try:
                if len(_rows(killed)[0]) >= 3:
                    break
            except sqlite3.Error:
                pass
        if proc.poll() is not None:
            pytest.fail(f"search ended before it could be killed: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _rows(killed)[0]
    assert 3 <= len(partial) < n

    assert _cli(*args, "--run-dir", str(killed)).returncode == 0
    assert _cli(*args, "--run-dir", str(tmp_path / "straight")).returncode == 0
    resumed, per = _rows(killed)
    straight, _ = _rows(tmp_path / "straight")
    assert len(resumed) == n and len({r[1] for r in resumed}) == n
    assert all(per[f"cand:{i}"] == 6 for i in range(n))
    assert resumed == straight


def test_a_population_batched_lowrank_search_scores_as_one_candidate_at_a_time(tiny_engine, tiny_model_dir, tmp_path):
    def completions(run_dir):
        con = sqlite3.connect(Path(run_dir) / DB_NAME)
        try:
            return con.execute("SELECT model, example, completion FROM results ORDER BY model, example").fetchall()
        finally:
            con.close()

    lowrank = dict(strategy="lowrank", rank=2, population=5)
    one = search(_config(tiny_model_dir, **lowrank), tmp_path / "one", engine=tiny_engine, progress=False)
    together = search(
        _config(tiny_model_dir, **lowrank, population_batch=2), tmp_path / "two", engine=tiny_engine, progress=False
    )
    assert _key(together.ranked) == _key(one.ranked)
    assert completions(tmp_path / "two") == completions(tmp_path / "one")
    # a run can be resumed with another population batch (it changes speed, not the candidates)
    grown = search(
        _config(tiny_model_dir, **{**lowrank, "population": 7}, population_batch=0),
        tmp_path / "two",
        engine=tiny_engine,
        progress=False,
    )
    assert len(grown.ranked) == 7 and len({c.seed for c in grown.ranked}) == 7


def test_population_batching_is_refused_where_it_cannot_apply(tiny_model_dir):
    with pytest.raises(ThicketsError, match="needs low-rank candidates"):
        _config(tiny_model_dir, population_batch=4)
    with pytest.raises(ThicketsError, match="cannot race them"):
        _config(tiny_model_dir, strategy="lowrank", rank=2, population_batch=4, racing="exact")


def test_a_new_run_draws_no_question_twice_and_an_old_config_keeps_its_splits(tiny_model_dir, tmp_path):
    """Split scheme 2 for new runs (no commuted twin of a validation question among test or train); a stored
    config without the field is a run made before it, and keeps scheme 1's examples."""
    from thickets.randopt.preflight import prepare
    from thickets.tasks import get_task
    from thickets.tasks.splits import make_splits

    config = _config(tiny_model_dir, task="products", val_size=48)
    assert config.split_scheme == 2
    _, _, val, _ = prepare(config, tmp_path / "run")
    assert val == make_splits(get_task("products"), 0, 48, scheme=2)[0]
    old = {k: v for k, v in config.to_dict().items() if k != "split_scheme"}
    assert SearchConfig.from_dict(old).split_scheme == 1
    assert SearchConfig.from_dict(config.to_dict()).split_scheme == 2
    assert "split_scheme" in SearchConfig.INHERITED  # a later call cannot change which examples a run holds
