"""Validation and test splits: disjoint, and fixed by the task and a seed.

Both come from one deterministic stream of the task's examples: validation is the first
`val_size` distinct examples, test the distinct examples after it that are not in validation.
A larger test split therefore extends a smaller one, and stored test answers stay valid.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Task

#: how many repeats in a row end a stream of a procedural task with a small example space
_MAX_REPEATS = 10_000


def _distinct(task: Task, seed: int) -> Iterator[Example]:
    seen: set[str] = set()
    repeats = 0
    for ex in task.examples(seed):
        if ex.id in seen:
            repeats += 1
            if repeats >= _MAX_REPEATS:
                return
            continue
        repeats = 0
        seen.add(ex.id)
        yield ex


def make_splits(task: Task, seed: int, val_size: int, test_size: int = 0) -> tuple[list[Example], list[Example]]:
    """(validation, test) lists; raises when the task cannot supply that many distinct examples."""
    stream = _distinct(task, seed)
    val = list(itertools.islice(stream, val_size))
    if len(val) < val_size:
        raise ThicketsError(
            f"task {task.name} has only {len(val)} distinct examples; the validation split needs {val_size}"
            if val
            else f"task {task.name} gives no examples: its validation split is empty"
        )
    test = list(itertools.islice(stream, test_size))
    if len(test) < test_size:
        raise ThicketsError(
            f"task {task.name} has only {len(test)} examples left after the validation split; "
            f"the test split needs {test_size}"
            if test
            else f"task {task.name} has no examples left for a test split"
        )
    return val, test
