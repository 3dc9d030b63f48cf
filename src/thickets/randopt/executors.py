"""Where candidates are scored: in this process, or on Ray actors across processes, GPUs and machines.

An executor takes work items (None for the base model, or a candidate index) and yields
(item, rows, seconds) as each finishes, in any order. It never writes the store: the search
driver does, one candidate per transaction, so a result is recorded once or not at all.

The Ray executor keeps one actor per worker; each loads the model once and scores one item at
a time. The driver hands the next item to whichever actor finishes first (no synchronous
rounds where the slowest worker gates the rest). An actor that dies has its item put back at
the head of the queue; Ray restarts the actor (it reloads the model) and it goes on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from thickets.engines import Engine
from thickets.errors import ThicketsError
from thickets.options import option
from thickets.randopt.config import SearchConfig
from thickets.randopt.preflight import population_batch_for
from thickets.randopt.scoring import engine_for, evaluate, evaluate_population, race_for, task_for
from thickets.tasks import Example, ScoredExample, Task
from thickets.tasks.splits import make_splits

Item = int | None  # None: the base model
Result = tuple[Item, list[ScoredExample], float]
EXECUTORS = ("inprocess", "ray")


class Executor(Protocol):
    def adopt(self, config: SearchConfig) -> None:
        """Score with this config: the search's own, as the run folder decides it (see SearchConfig.resuming).
        Called before any work, and again once a pilot has chosen sigma (only the pilot's record and the
        population differ then)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The engine settings that change scores, for the run record."""
        ...

    def run(self, items: Iterable[Item], threshold: Callable[[], float | None]) -> Iterator[Result]:
        """Score the items, taken from the iterable as workers free up; `threshold()` is racing's bar for
        a candidate given out now (None: no racing)."""
        ...

    def close(self) -> None: ...


class _Scorer:
    """What a worker holds: the engine, the task and its validation split, and racing's rule."""

    def __init__(
        self,
        config: SearchConfig,
        engine: Engine | None = None,
        device: str | None = None,
        task: Task | None = None,
        val: Sequence[Example] | None = None,
    ):
        self.config = config
        self.task = task_for(config) if task is None else task  # a worker builds its own; search() passes its
        if val is None:
            val = make_splits(self.task, config.split_seed, config.val_size, scheme=config.split_scheme)[0]
        self.val = val
        self.race = race_for(config, self.task)
        self.engine = engine_for(config, device, compiled=config.compile_decode) if engine is None else engine

    def score(self, item: Item, threshold: float | None) -> Result:
        spec = None if item is None else self.config.candidate(item)
        t0 = time.perf_counter()
        rows = evaluate(
            self.engine, self.task, self.val, self.config, spec, self.race if item is not None else None, threshold
        )
        return item, rows, time.perf_counter() - t0

    def score_together(self, items: list[int]) -> list[Result]:
        """Low-rank candidates in one population batch; each is charged an equal share of the time."""
        t0 = time.perf_counter()
        specs = [self.config.candidate(i) for i in items]
        rows = evaluate_population(self.engine, self.task, self.val, self.config, specs)
        seconds = (time.perf_counter() - t0) / len(items)
        return [(item, r, seconds) for item, r in zip(items, rows)]


class InProcessExecutor:
    """The default: one engine in this process, items in order."""

    def __init__(
        self,
        config: SearchConfig,
        engine: Engine | None = None,
        task: Task | None = None,
        val: Sequence[Example] | None = None,
    ):
        self._scorer = _Scorer(config, engine, task=task, val=val)

    def adopt(self, config: SearchConfig) -> None:
        self._scorer.config = config

    def describe(self) -> dict[str, Any]:
        return self._scorer.engine.describe()

    def run(self, items: Iterable[Item], threshold: Callable[[], float | None]) -> Iterator[Result]:
        together = population_batch_for(self._scorer.config, self._scorer.val)
        if together <= 1:
            for item in items:
                yield self._scorer.score(item, None if item is None else threshold())
            return
        pending: list[int] = []
        for item in items:
            if item is None:
                yield self._scorer.score(None, None)
                continue
            pending.append(item)
            if len(pending) == together:
                yield from self._scorer.score_together(pending)
                pending = []
        if pending:
            yield from self._scorer.score_together(pending)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local Ray started (and stopped) by thickets
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: int | None = None  # default: the machine's cores shared among the workers
    max_restarts: int = 3  # per actor: a worker that keeps dying stops the run


class RayExecutor:
    """Candidates on Ray actors, from a shared queue: a free worker takes the next item at once.

    Ray and the actors start on first use, so search() has checked its input before any worker
    loads a model."""

    def __init__(self, config: SearchConfig, options: RayOptions = RayOptions()):
        try:
            import ray
        except ImportError:
            raise ThicketsError("the Ray executor needs Ray: pip install 'thickets[ray]'") from None
        if options.workers < 1:
            raise ThicketsError(f"--workers must be at least 1, got {options.workers}")
        if options.gpus_per_worker < 0:
            raise ThicketsError(f"--gpus-per-worker must be >= 0, got {options.gpus_per_worker}")
        if options.address:
            check_reachable(options.address)
        elif options.gpus_per_worker == 0 and options.workers > (os.cpu_count() or 1):
            raise ThicketsError(
                f"--workers {options.workers} is more than the {os.cpu_count()} cores here (a local Ray "
                f"gives each worker at least one); use at most {os.cpu_count()}, or --address a cluster"
            )
        self._ray, self._config, self._options = ray, config, options
        self._config_dict = config.to_dict()  # sent with every item: a restarted actor has its first config
        self._started = False
        self.actors: list[Any] = []  # Ray actor handles
        self.requeued = 0

    def _start(self) -> None:
        if self.actors:
            return
        ray, options = self._ray, self._options
        if not ray.is_initialized():
            if options.address:
                connect(ray, options.address)
            else:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )  # our own, never a cluster found lying around
                self._started = True
                watch_local_ray(ray)
        cpus = options.cpus_per_worker or max(1, (os.cpu_count() or 1) // options.workers)
        total = ray.cluster_resources()
        for what, need in (("CPU", cpus * options.workers), ("GPU", options.gpus_per_worker * options.workers)):
            if need > total.get(what, 0):
                raise ThicketsError(
                    f"{options.workers} Ray workers need {need:g} {what}s and the cluster has "
                    f"{total.get(what, 0):g}; use fewer --workers"
                )
        device = "cuda" if options.gpus_per_worker > 0 else "cpu"
        worker_cls = ray.remote(_RayWorker).options(
            num_cpus=cpus, num_gpus=options.gpus_per_worker, max_restarts=options.max_restarts, max_task_retries=0
        )
        config_dict = self._config.to_dict()
        self.actors = [worker_cls.remote(config_dict, cpus, device) for _ in range(options.workers)]
        self._max_failures = options.workers * (1 + options.max_restarts)
        self._describe: dict[str, Any] = ray.get(self.actors[0].describe.remote())

    def adopt(self, config: SearchConfig) -> None:
        if self.actors and _settled(config) != _settled(self._config):
            raise RuntimeError("the Ray workers were started with another config")
        self._config = config
        self._config_dict = config.to_dict()

    def describe(self) -> dict[str, Any]:
        self._start()
        return self._describe

    def pids(self) -> list[int]:
        self._start()
        return self._ray.get([a.pid.remote() for a in self.actors])

    def run(self, items: Iterable[Item], threshold: Callable[[], float | None]) -> Iterator[Result]:
        self._start()
        ray = self._ray
        fresh = iter(items)  # taken lazily: a population of millions is never listed
        retry: deque[object] = deque()  # items handed back by a dead worker, scored first
        idle = list(self.actors)
        inflight: dict[Any, tuple[Any, object]] = {}  # object ref -> (actor, item)
        failures = 0
        end = object()

        def take() -> object:  # an Item, or `end`
            return retry.popleft() if retry else next(fresh, end)

        while True:
            while idle and (item := take()) is not end:
                actor = idle.pop()
                ref = actor.score.remote(item, None if item is None else threshold(), self._config_dict)
                inflight[ref] = (actor, item)
            if not inflight:
                return
            done, _ = ray.wait(list(inflight), num_returns=1)
            actor, item = inflight.pop(done[0])
            try:
                result = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                retry.appendleft(item)  # scored again first, by this actor once Ray has restarted it, or another
                self.requeued += 1
                if isinstance(e, ray.exceptions.ActorUnavailableError):
                    time.sleep(0.5)  # restarting (reloading the model), not a new death: ask again shortly
                else:
                    failures += 1
                    if failures > self._max_failures:
                        raise ThicketsError(
                            f"Ray workers keep dying ({failures} times); last: {type(e).__name__}"
                        ) from None
                idle.append(actor)
                continue
            idle.append(actor)
            yield result

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(a)
        if self._started:
            self._ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a Ray address nothing answers at, in seconds (ray.init retries for minutes)."""

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ThicketsError(f"--address must be HOST:PORT (or ray://HOST:PORT), got {address!r}")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ThicketsError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def connect(ray: ModuleType, address: str) -> None:
    """ray.init on a cluster, its retries' log lines kept off the terminal; a failure is one line."""

    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 2)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as e:  # ray raises ConnectionError, RuntimeError, ... for an unusable address
                raise ThicketsError(f"cannot connect to a Ray cluster at {address}: {e}") from None
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def watch_local_ray(ray: ModuleType) -> None:
    """A local Ray outlives a driver killed with SIGKILL (its shutdown runs at exit). A watcher process,
    holding a pipe from this one, stops Ray's processes of this session when the pipe closes."""

    node = ray._private.worker.global_worker.node
    session = Path(node.get_session_dir_path()).name
    read, write = os.pipe()
    code = (
        "import os, signal, sys, time\n"
        "r, session = int(sys.argv[1]), sys.argv[2]\n"
        "while os.read(r, 1): pass\n"
        "def ours(pid):  # its command line or an open file names the session (agents rename themselves)\n"
        "    if session.encode() in open(f'/proc/{pid}/cmdline', 'rb').read(): return True\n"
        "    return any(session in os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd'))\n"
        "for attempt in range(50):\n"
        "    found = False\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            if int(pid) != os.getpid() and ours(pid):\n"
        "                os.kill(int(pid), signal.SIGKILL); found = True\n"
        "        except OSError: pass\n"
        "    if not found: break\n"
        "    time.sleep(0.1)\n"
    )
    subprocess.Popen(
        [sys.executable, "-c", code, str(read), session],
        pass_fds=(read,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read)
    os.set_inheritable(write, False)  # held open by this process alone: closed when it dies


class _RayWorker:
    """One Ray actor: the model loaded once, candidates scored one at a time."""

    def __init__(self, config: dict[str, Any], threads: int, device: str):
        import torch

        torch.set_num_threads(threads)
        os.environ["THICKETS_NOISE_THREADS"] = str(threads)
        self._scorer = _Scorer(SearchConfig.from_dict(config), device=device)
        self._config: dict[str, Any] = config

    def describe(self) -> dict[str, Any]:
        return self._scorer.engine.describe()

    def pid(self) -> int:
        return os.getpid()

    def score(self, item: Item, threshold: float | None, config: dict[str, Any] | None = None) -> Result:
        """Score an item with the driver's config as it stands (a pilot's choice is made after the actors start)."""
        if config is not None and config != self._config:
            self._scorer.config, self._config = SearchConfig.from_dict(config), config
        return self._scorer.score(item, threshold)


def _settled(config: SearchConfig) -> SearchConfig:
    """A config without what may change while a search runs: the pilot's choice, and the population."""
    return replace(config.starting(), population=1)


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a search scores its candidates (not part of the run: any executor gives the same scores)."""

    executor: str = option(
        "inprocess",
        "where candidates are scored: this process, or Ray actors (see README: Scaling out)",
        choices=EXECUTORS,
    )
    address: str | None = option(None, "ray: an existing cluster (ray start --head ...); default: a local Ray")
    workers: int = option(2, "ray: actors, each loading the model once")
    gpus_per_worker: float = option(0.0, "ray: GPUs per actor (0: CPU)")


def make_executor(options: ExecutorOptions, config: SearchConfig, *, engine: Engine | None = None) -> Executor:
    if options.executor == "inprocess":
        return InProcessExecutor(config, engine)
    if options.executor == "ray":
        if engine is not None:
            raise ThicketsError("the Ray executor loads the model in its workers; do not pass an engine")
        return RayExecutor(config, RayOptions(options.address, options.workers, options.gpus_per_worker))
    raise ThicketsError(f"unknown executor {options.executor!r}; available: {', '.join(EXECUTORS)}")
