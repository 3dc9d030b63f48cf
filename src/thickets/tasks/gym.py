"""Any reasoning-gym task by name, scored with reasoning-gym's own scorer.

reasoning-gym datasets are procedural: item i is generated from (seed, i), so a split seed
gives an endless deterministic stream. Correct means the scorer gives full credit; partial
credit counts in the reward only.

The answer is the last <answer> tag. Small models rarely write tags, so where the reference
answer is an integer and there is no tag, the final number of the completion is taken instead
(GSM8K-style flexible extraction); reasoning-gym's scorer still judges it.
"""

from __future__ import annotations

import functools
from typing import Iterator

from ..errors import ThicketsError
from .base import Example, Score
from .answers import extract_final_number, parse_number
from .extract import last_tag, normalise

_INSTRUCTION = "\n\nGive only the final answer inside <answer></answer> tags."
_STREAM_SIZE = 1_000_000


@functools.cache
def gym_task_names() -> tuple[str, ...]:
    from reasoning_gym.factory import DATASETS

    return tuple(sorted(DATASETS))


class GymTask:
    stop = ("</answer>",)
    system_prompt: str | None = None

    def __init__(self, dataset: str, **config):
        if dataset not in gym_task_names():
            raise ThicketsError(f"unknown reasoning-gym task {dataset!r}; see `thickets tasks` for the list")
        self.dataset = dataset
        self.config = config
        self.name = f"gym:{dataset}"
        self.description = f"reasoning-gym {dataset}"

    def _dataset(self, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=_STREAM_SIZE, seed=seed, **self.config)
        except Exception as e:
            raise ThicketsError(f"cannot create reasoning-gym task {self.dataset}: {e}") from None

    def examples(self, seed: int) -> Iterator[Example]:
        ds = self._dataset(seed)
        for i in range(_STREAM_SIZE):
            entry = ds[i]
            yield Example(id=f"{self.name}:{entry['question']}", prompt=entry["question"] + _INSTRUCTION,
                          data={"entry": entry})

    @functools.cached_property
    def _scorer(self):
        return self._dataset(0)

    def score(self, example: Example, completion: str) -> Score:
        answer = last_tag(completion)
        if answer is None and _is_integer(example.data["entry"].get("answer")):
            number = extract_final_number(completion)
            value = parse_number(number) if number is not None else None
            answer = str(value) if value is not None and value.denominator == 1 else None
        if answer is None:
            return Score(None, None, 0.0, False)
        try:
            reward = float(self._scorer.score_answer(answer, example.data["entry"]))
        except Exception:
            reward = 0.0
        return Score(answer, normalise(answer), reward, reward >= 1.0)


def _is_integer(answer) -> bool:
    return isinstance(answer, int) or (isinstance(answer, str) and answer.strip().lstrip("-").isdigit())
