"""Several tasks as one (`--task A,B,C`): each candidate is scored on all of them in one pass.

Examples are taken from the tasks in turn, so validation holds about val_size / T of each;
an example's id carries its task (`A|<id>`), so everything stored per example can be read
back per task. Generation groups examples by task (each keeps its own stop strings and system
prompt); the candidate's score, what the search ranks, is the mean reward over all of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, Task

SEP = "|"


class MultiTask(Task):
    parts: Mapping[str, Task]  # always set: a multi-task run has its parts

    def __init__(self, parts: dict[str, Task]):
        if len(parts) < 2:
            raise ThicketsError("a multi-task run needs at least two different tasks")
        self.parts = parts
        self.name = ",".join(parts)
        self.description = "several tasks, scored together: " + "; ".join(
            f"{n}: {t.description}" for n, t in parts.items()
        )
        ranges = [t.reward_range for t in parts.values()]
        self.reward_range = None if None in ranges else (min(r[0] for r in ranges if r), max(r[1] for r in ranges if r))
        self.packages = tuple(dict.fromkeys(p for t in parts.values() for p in t.packages))
        self.sources = {f"{n}:{role}": src for n, t in parts.items() for role, src in t.sources.items()}
        self.images = any(t.images for t in parts.values())

    def examples(self, seed: int) -> Iterator[Example]:
        streams = {n: iter(t.examples(seed)) for n, t in self.parts.items()}
        for name in itertools.cycle(list(streams)):
            if not streams:
                return
            if name not in streams:
                continue
            ex = next(streams[name], None)
            if ex is None:
                del streams[name]
                continue
            yield Example(f"{name}{SEP}{ex.id}", ex.prompt, {"task": name, "example": ex})

    def score(self, example: Example, completion: str) -> Score:
        return self.parts[example.data["task"]].score(example.data["example"], completion)

    def image_of(self, example: Example) -> bytes | None:
        return self.parts[example.data["task"]].image_of(example.data["example"])

    def duplicate_key(self, example: Example) -> str:
        """The part's own key, within that part: products' "2 * 8" repeats "8 * 2", and no question of one task
        is a copy of another task's."""
        name = example.data["task"]
        return f"{name}{SEP}{self.parts[name].duplicate_key(example.data['example'])}"

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The first part's extraction. A user's prompt belongs to no part, so no part can be chosen
        by the example as `score` chooses; where the parts extract alike (all gsm8k files, all
        integer-answer reasoning-gym tasks) that is every part's, and so `score`'s on every example;
        where they differ it is `score`'s on the first part's examples only."""
        return next(iter(self.parts.values())).extract(completion)

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        """Each task scores its own examples, in one batch per task."""
        out: dict[int, Score] = {}
        for part, idx, inner in by_part(self, examples):
            out.update(zip(idx, part.score_batch(inner, [completions[i] for i in idx])))
        return [out[i] for i in range(len(examples))]

    def check(self, examples: Sequence[Example]) -> None:
        for part, _, inner in by_part(self, examples):
            part.check(inner)


T = TypeVar("T")


def per_task(task: Task, examples: Sequence[Example], each: Callable[[Task, list[Example]], list[T]]) -> list[T]:
    """`each(task, examples)` for a single task; for a multi-task run, once per task on its own examples
    (as that task made them), the results put back in the order of `examples`."""
    if task.parts is None:
        return each(task, list(examples))
    out: dict[int, T] = {}
    for part, idx, inner in by_part(task, examples):
        out.update(zip(idx, each(part, inner)))
    return [out[i] for i in range(len(examples))]


def task_names(spec: str) -> list[str]:
    """The tasks a `--task` value names: one, or several separated by commas."""
    return [n.strip() for n in spec.split(",") if n.strip()]


def by_part(task: Task, examples: Sequence[Example]) -> Iterator[tuple[Task, list[int], list[Example]]]:
    """For a multi-task run: each task, the positions of its examples, and those examples as the task
    made them. Callers work per task and put results back at the positions."""
    for name, part in (task.parts or {}).items():
        idx = [i for i, ex in enumerate(examples) if ex.data["task"] == name]
        if idx:
            yield part, idx, [examples[i].data["example"] for i in idx]


def task_of(example_id: str) -> str:
    """The task an example of a multi-task run belongs to, from its stored id."""
    return example_id.split(SEP, 1)[0]
