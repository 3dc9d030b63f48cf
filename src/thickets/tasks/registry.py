"""Tasks by name: a decorator registers a factory under the name the command line uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thickets.tasks.base import Task, as_task

_REGISTRY: dict[str, tuple[Callable[[], Any], str]] = {}


def register_task(name: str, factory: Callable[[], Any], description: str) -> None:
    """Make a task available by name (to the CLI too). Later registrations replace earlier ones.
    The factory may return any object with the task contract's core (see tasks/base.py)."""
    _REGISTRY[name] = (factory, description)


def task(name: str, description: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: register the function below as the factory of task `name`."""

    def register(factory: Callable[[], Any]) -> Callable[[], Any]:
        register_task(name, factory, description)
        return factory

    return register


def make(name: str) -> Task | None:
    """A new instance of the registered task `name`, or None when there is none."""
    entry = _REGISTRY.get(name)
    return None if entry is None else as_task(entry[0]())


def registered() -> list[tuple[str, str]]:
    """(name, description) of every registered task, by name."""
    return [(name, description) for name, (_, description) in sorted(_REGISTRY.items())]
