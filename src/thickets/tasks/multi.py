"""Several tasks as one (`--task A,B,C`): each candidate is scored on all of them in one pass.

Examples are taken from the tasks in turn, so validation holds about val_size / T of each;
an example's id carries its task (`A|<id>`), so everything stored per example can be read
back per task. Generation groups examples by task (each keeps its own stop strings and system
prompt); the candidate's score, what the search ranks, is the mean reward over all of them.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score

SEP = "|"


class MultiTask:
    def __init__(self, parts: dict[str, object]):
        if len(parts) < 2:
            raise ThicketsError("a multi-task run needs at least two different tasks")
        self.parts = parts
        self.name = ",".join(parts)
        self.description = "several tasks, scored together: " + "; ".join(
            f"{n}: {getattr(t, 'description', '')}" for n, t in parts.items())
        self.stop = ()
        self.system_prompt = None
        lows, highs = zip(*(getattr(t, "reward_range", (0.0, 1.0)) or (None, None) for t in parts.values()))
        self.reward_range = None if None in lows + highs else (min(lows), max(highs))
        self.packages = tuple(dict.fromkeys(p for t in parts.values() for p in getattr(t, "packages", ())))
        self.sources = {f"{n}:{role}": src for n, t in parts.items() for role, src in getattr(t, "sources", {}).items()}

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

    def part(self, example: Example) -> tuple[str, object, Example]:
        name = example.data["task"]
        return name, self.parts[name], example.data["example"]

    def score(self, example: Example, completion: str) -> Score:
        _, task, inner = self.part(example)
        return task.score(inner, completion)

    def check(self, examples: Sequence[Example]) -> None:
        for part, _, inner in by_part(self, examples):
            if hasattr(part, "check"):
                part.check(inner)


def task_names(spec: str) -> list[str]:
    """The tasks a `--task` value names: one, or several separated by commas."""
    return [n.strip() for n in spec.split(",") if n.strip()]


def by_part(task, examples: Sequence[Example]) -> Iterator[tuple[object, list[int], list[Example]]]:
    """For a multi-task run: each task, the positions of its examples, and those examples as the task
    made them. Callers work per task and put results back at the positions."""
    for name, part in task.parts.items():
        idx = [i for i, ex in enumerate(examples) if ex.data["task"] == name]
        if idx:
            yield part, idx, [examples[i].data["example"] for i in idx]


def task_of(example_id: str) -> str:
    """The task an example of a multi-task run belongs to, from its stored id."""
    return example_id.split(SEP, 1)[0]
