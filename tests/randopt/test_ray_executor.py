"""The Ray executor: the same scores as in-process, a killed worker loses nothing, a killed driver resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from thickets.randopt.config import SearchConfig
from thickets.randopt.executors import RayExecutor, RayOptions
from thickets.randopt.search import search
from thickets.randopt.store import RunStore, candidate_model


def _config(model, **over):
    base = dict(
        model=str(model), task="products", population=6, sigmas=(0.05, 0.1), val_size=4, max_new_tokens=4, batch_size=4
    )
    return SearchConfig(**{**base, **over})


def _stored(run_dir):
    with RunStore.open(run_dir, write=False) as store:
        cands = store.candidates()
        return (
            {c.idx: c.score for c in cands},
            {c.idx: store.completions(candidate_model(c.idx), "val") for c in cands},
        )


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_sigma_auto_on_ray_workers_gives_the_in_process_run(tmp_path, tiny_model_dir, ray_session):
    """The pilot chooses sigma after the actors have started: they score what comes after with the choice."""
    from thickets.randopt.config import AUTO
    from thickets.randopt.store import read_config

    config = _config(tiny_model_dir, sigmas=AUTO, pilot_grid=(0.01, 0.05), pilot_per_sigma=2, population=7)
    search(config, tmp_path / "local", progress=False)
    executor = RayExecutor(config, RayOptions(workers=2, cpus_per_worker=1))
    try:
        search(config, tmp_path / "ray", executor=executor, progress=False)
    finally:
        executor.close()
    assert _stored(tmp_path / "ray") == _stored(tmp_path / "local")
    stored = read_config(tmp_path / "ray")
    assert stored.calibrated and stored == read_config(tmp_path / "local")
    with RunStore.open(tmp_path / "ray", write=False) as store:
        sigmas = [c.sigma for c in store.candidates()]
    assert sigmas[stored.pilot_size :] == [stored.pilot_chosen[0]] * (7 - stored.pilot_size)


def test_two_ray_workers_give_exactly_the_in_process_scores(tmp_path, tiny_model_dir, ray_session):
    config = _config(tiny_model_dir)
    search(config, tmp_path / "local", progress=False)
    executor = RayExecutor(config, RayOptions(workers=2, cpus_per_worker=1))
    try:
        search(config, tmp_path / "ray", executor=executor, progress=False)
    finally:
        executor.close()
    local, ray_run = _stored(tmp_path / "local"), _stored(tmp_path / "ray")
    assert sorted(local[0]) == list(range(6))
    assert ray_run == local  # scores and every completion


class _KillWorkersAfterFirst:
    """Wraps an executor: after its first candidate, SIGKILL every worker process (one is mid-candidate)."""

    def __init__(self, inner: RayExecutor):
        self.inner, self.pids, self.killed = inner, inner.pids(), False

    def adopt(self, config):
        self.inner.adopt(config)

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()

    def run(self, items, threshold):
        for result in self.inner.run(items, threshold):
            if not self.killed and result[0] is not None:
                for pid in self.pids:
                    os.kill(pid, signal.SIGKILL)
                self.killed = True
            yield result


def test_a_killed_worker_loses_no_candidate_and_records_none_twice(tmp_path, tiny_model_dir, ray_session):
    config = _config(tiny_model_dir, population=10, val_size=8, max_new_tokens=8)
    executor = _KillWorkersAfterFirst(RayExecutor(config, RayOptions(workers=2, cpus_per_worker=1)))
    try:
        result = search(config, tmp_path / "run", executor=executor, progress=False)
    finally:
        executor.close()
    assert executor.killed and executor.inner.requeued >= 1
    assert sorted(c.idx for c in result.ranked) == list(range(10))
    con = sqlite3.connect(tmp_path / "run" / "thickets.sqlite")
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT idx) FROM candidates").fetchone() == (10, 10)
    per_candidate = con.execute("SELECT model, COUNT(*) FROM results WHERE split='val' GROUP BY model").fetchall()
    assert len(per_candidate) == 11 and all(n == 8 for _, n in per_candidate)  # base + 10, each complete
    # the same scores as a run without failures
    search(config, tmp_path / "clean", progress=False)
    assert _stored(tmp_path / "run") == _stored(tmp_path / "clean")


def _ray_search(model, run, population: int) -> tuple[list[str], subprocess.Popen]:
    """A Ray search in its own process group, once it has stored two candidates: (its command, it)."""
    cmd = [
        sys.executable,
        "-m",
        "thickets.cli",
        "--quiet",
        "search",
        "--model",
        str(model),
        "--task",
        "products",
        "--population",
        str(population),
        "--sigma",
        "0.05",
        "--val-size",
        "8",
        "--max-new-tokens",
        "8",
        "--executor",
        "ray",
        "--workers",
        "2",
        "--run-dir",
        str(run),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            n = (
                sqlite3.connect(f"file:{run / 'thickets.sqlite'}?mode=ro", uri=True)
                .execute("SELECT COUNT(*) FROM candidates")
                .fetchone()[0]
            )
        except sqlite3.Error:
            n = 0
        if n >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-800:]
    return cmd, proc


def test_a_killed_driver_resumes_where_it_stopped(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    n = 80  # more than the workers can score while the test watches for the first two
    cmd, proc = _ray_search(tiny_model_dir, run, n)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    with RunStore.open(run, write=False) as store:
        before = len(store.candidates())
    assert 2 <= before < n
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-800:]
    con = sqlite3.connect(run / "thickets.sqlite")
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT idx) FROM candidates").fetchone() == (n, n)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_driver_killed_alone_leaves_no_ray_process_behind(tmp_path, tiny_model_dir):
    _, proc = _ray_search(tiny_model_dir, tmp_path / "run", 200)
    ray_processes = _descendants(proc.pid)
    assert len(ray_processes) >= 3  # Ray's own servers and the two workers, at least
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a scheduler's kill or an OOM kill would
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in ray_processes):
        time.sleep(0.5)
    assert [p for p in ray_processes if _alive(p)] == []
