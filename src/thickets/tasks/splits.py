"""Validation, test and train splits: disjoint, and fixed by the task and a seed.

Validation and test come from one deterministic stream of the task's examples: validation is the
first `val_size` distinct examples, test the distinct examples after it. A larger test split
therefore extends a smaller one, and stored test answers stay valid. The train split (what
distillation fine-tunes on) comes from a stream of its own seed, skipping every example that is one
question (`Task.duplicate_key`: "8 * 2" repeats "2 * 8") with an example of the validation split or
of the test split as large as the caller will ever evaluate on.

Which examples validation and test hold is recorded in every run and checked when it goes on, so
how they are drawn is a scheme a run keeps: 1, distinct by id (every run made before 0.2, whose test
split may hold a commuted twin of a validation question); 2, distinct by duplicate key, so that no
two examples of any split, or of two splits, are one question (every run begun since).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from thickets.errors import ThicketsError
from thickets.seeds import derive_seed
from thickets.tasks.base import Example, Task

#: how many repeats in a row end a stream of a procedural task with a small example space
_MAX_REPEATS = 10_000
#: the ways of drawing splits (see above); a run keeps the one it began with, a new one takes the newest
SPLIT_SCHEMES = (1, 2)
SPLIT_SCHEME = SPLIT_SCHEMES[-1]


def _same(task: Task, scheme: int) -> Callable[[Example], str]:
    """What makes two examples of one stream the same under `scheme`."""
    if scheme not in SPLIT_SCHEMES:
        raise ThicketsError(f"split scheme {scheme} is not one of {', '.join(map(str, SPLIT_SCHEMES))}")
    return task.duplicate_key if scheme == 2 else lambda ex: ex.id


def _distinct(task: Task, seed: int, same: Callable[[Example], str]) -> Iterator[Example]:
    seen: set[str] = set()
    repeats = 0
    for ex in task.examples(seed):
        if (key := same(ex)) in seen:
            repeats += 1
            if repeats >= _MAX_REPEATS:
                return
            continue
        repeats = 0
        seen.add(key)
        yield ex


def make_splits(
    task: Task, seed: int, val_size: int, test_size: int = 0, *, scheme: int = SPLIT_SCHEME
) -> tuple[list[Example], list[Example]]:
    """(validation, test) lists; raises when the task cannot supply that many distinct examples."""
    stream = _distinct(task, seed, _same(task, scheme))
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


def make_train_split(
    task: Task, seed: int, val_size: int, test_size: int, train_size: int, *, scheme: int = SPLIT_SCHEME
) -> list[Example]:
    """`train_size` distinct examples, none of them a question of the validation split or of a test split
    of up to `test_size` examples (a procedural task draws them from another stream; a data file's rows
    are whatever is left)."""
    train = train_examples(task, seed, val_size, test_size, train_size, scheme=scheme)
    if len(train) < train_size:
        raise ThicketsError(
            f"task {task.name} has only {len(train)} examples outside its validation and test splits; "
            f"the train split needs {train_size}"
            if train
            else f"task {task.name} has no examples left for a train split"
        )
    return train


def train_examples(
    task: Task, seed: int, val_size: int, test_size: int, at_most: int, *, scheme: int = SPLIT_SCHEME
) -> list[Example]:
    """The train split's first `at_most` examples, or all a finite task has outside validation and test.
    Held out by duplicate key in every scheme: a commuted twin of a test question, trained on, would
    count as held-out accuracy."""
    val, test = make_splits(task, seed, val_size, test_size, scheme=scheme)
    held_out = {task.duplicate_key(ex) for ex in val + test}
    stream = _distinct(task, derive_seed(b"thickets-train", seed), _same(task, scheme))
    return list(itertools.islice((ex for ex in stream if task.duplicate_key(ex) not in held_out), at_most))
