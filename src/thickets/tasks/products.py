"""Short numeric-answer tasks for small models: the answer is a number, not a tagged block.

Small models (SmolLM2-135M) mostly fail to use answer tags but often answer "9 * 4 = 36"
or "36". We take the number after the first '=', else the first number, and score exact
integer match. The example stream is a reasoning-gym dataset, so data and questions are
reasoning-gym's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from thickets.tasks.base import Example, Score, Task
from thickets.tasks.registry import task

_NUMBER = re.compile(r"-?\d{1,30}")
_AFTER_EQUALS = re.compile(r"=\s{0,5}(-?\d{1,30})")
_SCAN_CHARS = 400  # answers are short; never scan an adversarially long completion


def extract_number(completion: str) -> str | None:
    """The number after the first '=', else the first number; commas between digits ignored."""
    text = completion[:_SCAN_CHARS].replace(",", "")
    if "=" in text and (m := _AFTER_EQUALS.search(text)):
        return str(int(m.group(1)))
    m = _NUMBER.search(text)
    return str(int(m.group(0))) if m else None


class GymNumberTask(Task):
    """A reasoning-gym dataset whose answers are integers, scored by exact match of the extracted number."""

    stop: tuple[str, ...] = ()  # answers are a few tokens; max_new_tokens bounds them
    system_prompt: str | None = None
    packages = ("reasoning-gym",)  # generates the examples

    def __init__(self, name: str, dataset: str, description: str, *, commutes: bool = False, **config: Any):
        """`commutes`: the question is its numbers in any order (a product), so "8 * 2" repeats "2 * 8"."""
        self.name, self.dataset, self.description, self.config = name, dataset, description, config
        self.commutes = commutes

    def examples(self, seed: int) -> Iterator[Example]:
        import reasoning_gym

        ds = reasoning_gym.create_dataset(self.dataset, size=1_000_000, seed=seed, **self.config)
        for i in range(len(ds)):
            entry = ds[i]
            yield Example(
                id=f"{self.name}:{entry['question']}",
                prompt=entry["question"],
                data={"answer": str(entry["answer"]).strip()},
            )

    def duplicate_key(self, example: Example) -> str:
        """The sorted numbers of the question when they commute, else the default."""
        if not self.commutes:
            return super().duplicate_key(example)
        return "*".join(map(str, sorted(int(n) for n in _NUMBER.findall(example.prompt))))

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The extracted number, which is its own vote key."""
        answer = extract_number(completion)
        return answer, answer

    def score(self, example: Example, completion: str) -> Score:
        answer = extract_number(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        correct = answer == example.data["answer"]
        return Score(answer, answer, float(correct), correct)


@task("products", "multiply two 1-2 digit numbers, answer by number (the demo task)")
def products() -> GymNumberTask:
    return GymNumberTask(
        "products",
        "products",
        "multiply two 1-2 digit numbers (reasoning-gym products); exact match of the number given",
        commutes=True,
        min_digits=1,
        max_digits=2,
    )
