"""The task registry: built-in tasks by name, reasoning-gym tasks as `gym:<name>`."""

from __future__ import annotations

from typing import Callable

from ..errors import ThicketsError
from .base import Example, Score, Task

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
        from .countdown import CountdownTask

        return CountdownTask()

    def products() -> Task:
        from .numeric import products

        return products()

    def humaneval() -> Task:
        from .code import HumanEvalTask

        return HumanEvalTask()

    for name, factory, description in (
        ("countdown", countdown, "reach a target with 3-4 numbers and + - * /; 0.1 format + 1 correct"),
        ("humaneval", humaneval, "HumanEval: complete the function; its tests run in the sandbox"),
        ("products", products, "multiply two 1-2 digit numbers, answer by number (the demo task)"),
    ):
        _REGISTRY.setdefault(name, (factory, description))


def get_task(name: str) -> Task:
    _builtins()
    if name.startswith("gym:"):
        from .gym import GymTask

        return GymTask(name.removeprefix("gym:"))
    if name not in _REGISTRY:
        raise ThicketsError(f"unknown task {name!r}; known: {', '.join(sorted(_REGISTRY))}, or gym:<name> "
                            f"(see `thickets tasks`)")
    return _REGISTRY[name][0]()


def describe_tasks() -> list[tuple[str, str]]:
    _builtins()
    rows = [(name, desc) for name, (_, desc) in sorted(_REGISTRY.items())]
    from .gym import gym_task_names

    rows += [(f"gym:{n}", "reasoning-gym task, scored by reasoning-gym") for n in gym_task_names()]
    return rows


__all__ = ["Example", "Score", "Task", "describe_tasks", "get_task", "register_task"]


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
        s = task.score(example_from_dict(task, example), completion)
    except KeyError as e:
        raise ThicketsError(f"the example lacks the field {e.args[0]!r} that task {task.name} needs") from None
    return {"task": task.name, "answer": s.answer, "vote_key": s.vote_key, "extracted": s.extracted,
            "reward": s.reward, "correct": s.correct}
