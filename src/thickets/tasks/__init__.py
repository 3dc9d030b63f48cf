"""The task registry: built-in tasks by name, reasoning-gym tasks as `gym:<name>`."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, Task

_REGISTRY: dict[str, tuple[Callable[[], Task], str]] = {}


def register_task(name: str, factory: Callable[[], Task], description: str) -> None:
    """Make a task available by name (to the CLI too). Later registrations replace earlier ones."""
    _REGISTRY[name] = (factory, description)


_builtins_loaded = False


def _builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True

    def countdown() -> Task:
        from thickets.tasks.countdown import CountdownTask

        return CountdownTask()

    def countdown_paper() -> Task:
        from thickets.tasks.countdown import CountdownPaperTask

        return CountdownPaperTask()

    def products() -> Task:
        from thickets.tasks.products import products

        return products()

    def humaneval() -> Task:
        from thickets.tasks.code.tasks import HumanEvalTask

        return HumanEvalTask()

    for name, factory, description in (
        ("countdown", countdown, "reach a target with 3-4 numbers and + - * /; 0.1 format + 1 correct"),
        ("countdown-paper", countdown_paper, "countdown with the authors' prompt, system message and graded "
                                             "format reward, for numbers comparable with theirs"),
        ("humaneval", humaneval, "HumanEval: complete the function; its tests run in the sandbox"),
        ("products", products, "multiply two 1-2 digit numbers, answer by number (the demo task)"),
    ):
        _REGISTRY.setdefault(name, (factory, description))


def get_task(name: str, columns: Mapping[str, str] | None = None, reward: str | None = None,
             reward_timeout: float = 300.0) -> Task:
    """A task by name: a built-in, `gym:<name>`, or `<kind>:<data file>` with an optional column mapping;
    `reward` (`module:function` or `file.py:function`) replaces its reward with a TRL-style function,
    run in a process of its own with `reward_timeout` seconds per batch."""
    _builtins()
    if "," in name:
        from thickets.tasks.multi import MultiTask, task_names

        names = task_names(name)
        if len(set(names)) != len(names):
            raise ThicketsError(f"task list {name!r} names a task twice")
        return MultiTask({n: get_task(n, columns, reward, reward_timeout) for n in names})
    kind, sep, rest = name.partition(":")
    from thickets.tasks.files.kinds import KINDS, make_file_task

    if sep and kind in KINDS:
        if not rest:
            raise ThicketsError(f"task {name!r} needs a data file: {kind}:PATH")
        task = make_file_task(kind, rest, columns)
    elif name in KINDS:  # no data: enough to score one example (`thickets score`), not to search
        task = KINDS[name]([], name, columns)
    else:
        if columns:
            raise ThicketsError(f"--columns applies to tasks read from a file ({', '.join(k + ':PATH' for k in KINDS)}), "
                                f"not to {name}")
        if kind == "gym" and sep:
            from thickets.tasks.gym import GymTask

            task = GymTask(rest)
        elif name in _REGISTRY:
            task = _REGISTRY[name][0]()
        else:
            raise ThicketsError(f"unknown task {name!r}; known: {', '.join(sorted(_REGISTRY))}, gym:<name>, "
                                f"or a data file as {', '.join(k + ':PATH' for k in KINDS)} (see `thickets tasks`)")
    if getattr(task, "kind", None) == "prompts" and not reward:
        raise ThicketsError(f"task {name} has no verifier of its own: give --reward module:function")
    if reward:
        from thickets.tasks.reward import RewardTask, load_reward

        task = RewardTask(task, *load_reward(reward, reward_timeout))
    return task


def score_all(task: Task, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
    """Scores for many completions: one call for tasks that score in batches (a user's reward function)."""
    if hasattr(task, "parts"):  # a multi-task run: each task scores its own examples
        from thickets.tasks.multi import by_part

        out: list[Score | None] = [None] * len(examples)
        for part, idx, inner in by_part(task, examples):
            for i, s in zip(idx, score_all(part, inner, [completions[i] for i in idx])):
                out[i] = s
        return out
    if hasattr(task, "score_batch"):
        return task.score_batch(examples, completions)
    return [task.score(ex, c) for ex, c in zip(examples, completions)]


def describe_tasks() -> list[tuple[str, str]]:
    _builtins()
    rows = [(name, desc) for name, (_, desc) in sorted(_REGISTRY.items())]
    from thickets.tasks.gym import gym_task_names

    from thickets.tasks.files.kinds import KINDS

    rows += [(f"{kind}:PATH", f"{cls.kind_description} (a JSONL/JSON/CSV/Parquet file or datasets folder)")
             for kind, cls in KINDS.items()]
    rows += [(f"gym:{n}", "reasoning-gym task, scored by reasoning-gym") for n in gym_task_names()]
    return rows


__all__ = ["Example", "Score", "Task", "describe_tasks", "get_task", "register_task", "score_all"]


def example_from_dict(task: Task, d: dict) -> Example:
    """An Example from user-written JSON: a task's own row format where it has one, else {prompt, data} or data."""
    if hasattr(task, "example_from_row"):
        return task.example_from_row(d)
    if "data" in d and isinstance(d["data"], dict):
        return Example(id=str(d.get("id", "example")), prompt=str(d.get("prompt", "")), data=d["data"])
    return Example(id=str(d.get("id", "example")), prompt=str(d.get("prompt", "")), data=d)


def score_one(task: Task, example: dict, completion: str) -> dict:
    """What a task makes of one completion: the tool for "why did this get that reward?"."""
    try:
        ex = example_from_dict(task, example)
        s = score_all(task, [ex], [completion])[0]
    except KeyError as e:
        raise ThicketsError(f"the example lacks the field {e.args[0]!r} that task {task.name} needs") from None
    out = {"task": task.name, "answer": s.answer, "vote_key": s.vote_key, "extracted": s.extracted,
           "reward": s.reward, "correct": s.correct}
    if "answer" in ex.data and "row" in ex.data:  # a file task's reference, as the task reads it
        out["reference"] = ex.data["answer"]
    return out
