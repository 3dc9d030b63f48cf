"""What a `--task` value names: a built-in or registered task, `gym:<name>`, `<kind>:<data file>`,
or several of them separated by commas; with `--reward`, the task with a user's reward function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks import countdown, products
from thickets.tasks.base import Example, Task
from thickets.tasks.code import tasks as code_tasks
from thickets.tasks.files.kinds import KINDS, make_file_task
from thickets.tasks.gym import GymTask, gym_task_names
from thickets.tasks.multi import MultiTask, task_names
from thickets.tasks.registry import make, registered
from thickets.tasks.reward import RewardTask, load_reward

BUILTIN_MODULES = (countdown, products, code_tasks)  # importing them registered their tasks


def get_task(
    name: str, columns: Mapping[str, str] | None = None, reward: str | None = None, reward_timeout: float = 300.0
) -> Task:
    """A task by name: a built-in, `gym:<name>`, or `<kind>:<data file>` with an optional column mapping;
    `reward` (`module:function` or `file.py:function`) replaces its reward with a TRL-style function,
    run in a process of its own with `reward_timeout` seconds per batch."""
    if "," in name:
        names = task_names(name)
        if len(set(names)) != len(names):
            raise ThicketsError(f"task list {name!r} names a task twice")
        return MultiTask({n: get_task(n, columns, reward, reward_timeout) for n in names})
    kind, sep, rest = name.partition(":")
    if sep and kind in KINDS:
        if not rest:
            raise ThicketsError(f"task {name!r} needs a data file: {kind}:PATH")
        task: Task = make_file_task(kind, rest, columns)
    elif name in KINDS:  # no data: enough to score one example (`thickets score`), not to search
        task = KINDS[name]([], name, columns)
    else:
        if columns:
            raise ThicketsError(
                f"--columns applies to tasks read from a file ({', '.join(k + ':PATH' for k in KINDS)}), not to {name}"
            )
        if kind == "gym" and sep:
            task = GymTask(rest)
        elif (made := make(name)) is not None:
            task = made
        else:
            raise ThicketsError(
                f"unknown task {name!r}; known: {', '.join(n for n, _ in registered())}, gym:<name>, "
                f"or a data file as {', '.join(k + ':PATH' for k in KINDS)} (see `thickets tasks`)"
            )
    if task.needs_reward and not reward:
        raise ThicketsError(f"task {name} has no verifier of its own: give --reward module:function")
    if reward:
        task = RewardTask(task, *load_reward(reward, reward_timeout))
    return task


def describe_tasks() -> list[tuple[str, str]]:
    """(name, description) of every task `--task` can name."""
    rows = registered()
    rows += [
        (f"{kind}:PATH", f"{cls.kind_description} (a JSONL/JSON/CSV/Parquet file or datasets folder)")
        for kind, cls in KINDS.items()
    ]
    rows += [(f"gym:{n}", "reasoning-gym task, scored by reasoning-gym") for n in gym_task_names()]
    return rows


def score_one(task: Task, example: Mapping[str, Any], completion: str) -> dict[str, Any]:
    """What a task makes of one completion: the tool for "why did this get that reward?"."""
    try:
        ex: Example = task.example_from_row(example)
        s = task.score_batch([ex], [completion])[0]
    except KeyError as e:
        raise ThicketsError(f"the example lacks the field {e.args[0]!r} that task {task.name} needs") from None
    out = {
        "task": task.name,
        "answer": s.answer,
        "vote_key": s.vote_key,
        "extracted": s.extracted,
        "reward": s.reward,
        "correct": s.correct,
    }
    if "answer" in ex.data and "row" in ex.data:  # a file task's reference, as the task reads it
        out["reference"] = ex.data["answer"]
    return out
