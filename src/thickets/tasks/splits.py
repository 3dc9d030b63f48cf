"""Validation, test and train splits: disjoint, and fixed by the task and a seed.

Validation and test come from one deterministic stream of the task's examples: validation is the
first `val_size` distinct examples, test the distinct examples after it. A larger test split
therefore extends a smaller one, and stored test answers stay valid. The train split (what
distillation fine-tunes on) comes from a stream of its own seed, skipping every example of the
validation split and of the test split as large as the caller will ever evaluate on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from thickets.errors import ThicketsError
from thickets.noise import derive_seed
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


def make_train_split(task: Task, seed: int, val_size: int, test_size: int, train_size: int) -> list[Example]:
    """`train_size` distinct examples that are in neither the validation split nor a test split of up to
    `test_size` examples (a procedural task draws them from another stream; a data file's rows are
    whatever is left)."""
    train = train_examples(task, seed, val_size, test_size, train_size)
    if len(train) < train_size:
        raise ThicketsError(
            f"task {task.name} has only {len(train)} examples outside its validation and test splits; "
            f"the train split needs {train_size}"
            if train
            else f"task {task.name} has no examples left for a train split"
        )
    return train


def train_examples(task: Task, seed: int, val_size: int, test_size: int, at_most: int) -> list[Example]:
    """The train split's first `at_most` examples, or all a finite task has outside validation and test."""
    val, test = make_splits(task, seed, val_size, test_size)
    held_out = {ex.id for ex in val} | {ex.id for ex in test}
    stream = (ex for ex in _distinct(task, derive_seed(b"thickets-train", seed)) if ex.id not in held_out)
    return list(itertools.islice(stream, at_most))
