"""Scoring one model on some examples: the base, one candidate, or a batch of low-rank candidates, in
the chunks every path uses, with the run's task, engine and racing rule made from its config.

Used by the search loop, the executors, the ensemble, the baselines and the benchmarks; it knows
nothing of populations, selection or the run folder (what is checked before a run writes is in
preflight.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thickets.engines import Engine, load_engine, render_prompt, uses_chat_template
from thickets.errors import ThicketsError
from thickets.noise import PerturbationSpec
from thickets.randopt.config import SearchConfig
from thickets.randopt.racing import Race
from thickets.tasks import Example, ScoredExample, Task, get_task
from thickets.tasks.files.data import parse_columns
from thickets.tasks.multi import per_task


def evaluate(
    engine: Engine,
    task: Task,
    examples: Sequence[Example],
    config: SearchConfig,
    spec: PerturbationSpec | None = None,
    race: Race | None = None,
    threshold: float | None = None,
) -> list[ScoredExample]:
    """Score one model (the base, or base + spec) on some examples; the weights are restored after.

    Examples go to the engine batch_size at a time in their order (the run's "chunks" batching), so
    a raced candidate is generated in exactly the batches an exhaustive search uses and racing
    never changes a completion. With a race and a threshold, scoring stops after the first chunk
    that leaves the candidate unable to reach the threshold; the rows scored so far are returned.
    Runs made before (batching "split") keep theirs: the whole list in one call, bucketed by length.
    """
    raced = race is not None and threshold is not None
    chunk = config.batch_size if config.batching == "chunks" or raced else len(examples)
    rows: list[ScoredExample] = []
    if spec is not None:
        engine.perturb(spec)
    try:
        for lo in range(0, len(examples), max(chunk, 1)):
            part = examples[lo : lo + chunk]
            rows += scored(task, part, generate(engine, task, part, config), lo)
            if raced and race is not None and race.should_stop([r.score.reward for r in rows], threshold):
                break
    finally:
        if spec is not None:
            engine.restore()
    return rows


def evaluate_population(
    engine: Engine, task: Task, examples: Sequence[Example], config: SearchConfig, specs: Sequence[PerturbationSpec]
) -> list[list[ScoredExample]]:
    """evaluate() for several low-rank experts at once: the same chunks of examples, each chunk one
    batched pass of every expert's rows (Engine.generate_population); rows per expert."""
    chunk = config.batch_size if config.batching == "chunks" else len(examples)
    out: list[list[ScoredExample]] = [[] for _ in specs]
    special = not uses_chat_template(engine.tokenizer, config.chat_template)

    def one_task(t: Task, exs: list[Example]) -> list[tuple[str, ...]]:
        prompts = render_prompts(engine.tokenizer, t, exs, config)
        per_expert = engine.generate_population(
            specs, prompts, config.max_new_tokens, t.stop, add_special_tokens=special
        )
        return list(zip(*per_expert))  # per example: each expert's completion

    for lo in range(0, len(examples), max(chunk, 1)):
        part = examples[lo : lo + chunk]
        by_example = per_task(task, part, one_task)
        for e in range(len(specs)):
            out[e] += scored(task, part, [c[e] for c in by_example], lo)
    return out


def scored(task: Task, part: Sequence[Example], completions: Sequence[str], first: int) -> list[ScoredExample]:
    """Result rows of a chunk of examples that starts at position `first` of its split."""
    scores = task.score_batch(part, completions)
    return [ScoredExample(first + i, ex, c, s) for i, (ex, c, s) in enumerate(zip(part, completions, scores))]


def render_prompts(tokenizer: Any, task: Task, examples: Sequence[Example], config: SearchConfig) -> list[str]:
    """The text each example is given to the model as, with its own task's system prompt."""
    return per_task(
        task,
        examples,
        lambda t, exs: [
            render_prompt(tokenizer, ex.prompt, t.system_prompt, config.chat_template, image=t.images) for ex in exs
        ],
    )


def generate(engine: Engine, task: Task, examples: Sequence[Example], config: SearchConfig) -> list[str]:
    """Completions in the order of `examples`, each task's examples with its own stop strings."""
    special = not uses_chat_template(engine.tokenizer, config.chat_template)

    def one_task(t: Task, exs: list[Example]) -> list[str]:
        prompts = render_prompts(engine.tokenizer, t, exs, config)
        if t.images:  # a vision-language engine (preflight.check_vision made sure)
            images = [t.image_of(ex) or b"" for ex in exs]
            texts: list[str] = engine.generate_images(prompts, images, config.max_new_tokens, t.stop)  # type: ignore[attr-defined]
            return texts
        return engine.generate(prompts, config.max_new_tokens, t.stop, add_special_tokens=special)

    return per_task(task, examples, one_task)


def race_for(config: SearchConfig, task: Task) -> Race | None:
    """The run's racing rule, or None when racing is off."""
    if config.racing == "off":
        return None
    reward_range = task.reward_range
    if reward_range is None:
        raise ThicketsError(
            f"racing needs the task's reward range, and task {task.name} (with a user reward "
            f"function) does not declare one; run without --racing"
        )
    return Race(
        config.val_size, config.racing_top_k, config.racing, config.racing_delta, *reward_range, chunk=config.batch_size
    )


def task_for(config: SearchConfig) -> Task:
    """The run's task, with its data file, column mapping and reward function."""
    return get_task(config.task, parse_columns(config.columns), config.reward, config.reward_timeout)


def engine_for(config: SearchConfig, device: str | None = None, *, compiled: bool = False) -> Engine:
    """The engine a run's config asks for (its model, engine, dtype, device and batch size); `device`
    overrides the config's (a Ray worker's GPU). `compiled`: the search's scorers pass the run's
    --compile; the commands that read a finished run (ensemble, serve, distill, merge) decode eagerly,
    wherever the run was made."""
    engine, _ = load_engine(
        config.model,
        engine=config.engine,
        dtype=config.dtype,
        device=device or config.device,
        batch_size=config.batch_size,
        compiled=compiled,
    )
    return engine
