"""Any reasoning-gym task by name, scored with reasoning-gym's own scorer.

reasoning-gym datasets are procedural: item i is generated from (seed, i), so a split seed
gives an endless deterministic stream. Correct means the scorer gives full credit; partial
credit counts in the reward only.

The answer is the last <answer> tag. Small models rarely write tags, so where the reference
answer is an integer and there is no tag, the final number of the completion is taken instead
(GSM8K-style flexible extraction); reasoning-gym's scorer still judges it.

reasoning-gym's scorers are third-party code reading model output, and several eval() it or
hang on it: they run only in the scorer sandbox (`third_party`), one fork per answer, and an
answer whose scoring fails, runs out of memory or times out earns 0.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.answers import extract_final_number, parse_number
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.extract import last_tag, normalise
from thickets.tasks.third_party import sandboxed, warm

_INSTRUCTION = "\n\nGive only the final answer inside <answer></answer> tags."
_STREAM_SIZE = 1_000_000


@functools.cache
def gym_task_names() -> tuple[str, ...]:
    from reasoning_gym.factory import DATASETS

    return tuple(sorted(DATASETS))


class GymTask(Task):
    stop = ("</answer>",)
    system_prompt: str | None = None
    packages = ("reasoning-gym",)

    def __init__(self, dataset: str, **config: Any):
        if dataset not in gym_task_names():
            raise ThicketsError(f"unknown reasoning-gym task {dataset!r}; see `thickets tasks` for the list")
        self.dataset = dataset
        self.config = config
        self.config_json = json.dumps(config, sort_keys=True)
        self.name = f"gym:{dataset}"
        self.description = f"reasoning-gym {dataset}"

    def _dataset(self, seed: int) -> Any:
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=_STREAM_SIZE, seed=seed, **self.config)
        except Exception as e:
            raise ThicketsError(f"cannot create reasoning-gym task {self.dataset}: {e}") from None

    def examples(self, seed: int) -> Iterator[Example]:
        ds = self._dataset(seed)
        for i in range(_STREAM_SIZE):
            entry = ds[i]
            yield Example(
                id=f"{self.name}:{entry['question']}", prompt=entry["question"] + _INSTRUCTION, data={"entry": entry}
            )

    def example_from_row(self, row: Mapping[str, Any]) -> Example:
        """An example from a reasoning-gym entry as the dataset gives it ({"question", "answer",
        "metadata"}), or wrapped as {"entry": ...} (`thickets score`)."""
        entry = row.get("entry", row)
        if not isinstance(entry, dict) or "question" not in entry:
            raise ThicketsError(
                f"a {self.name} example is a reasoning-gym entry with a 'question', 'answer' and 'metadata'"
            )
        return Example(
            id=f"{self.name}:{entry['question']}", prompt=str(entry["question"]) + _INSTRUCTION, data={"entry": entry}
        )

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The last <answer> tag, else the final integer of the completion, normalised as the key.

        `score` falls back to the final integer only where the reference answer is an integer, so on
        an example with another kind of answer an untagged completion's integer is an answer here and
        none there; on the rest (every example of an integer-answer dataset) the two agree."""
        answer = gym_answer(completion, integer_fallback=True)
        return answer, None if answer is None else normalise(answer)

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        answers = [gym_answer(c, _is_integer(ex.data["entry"].get("answer"))) for ex, c in zip(examples, completions)]
        todo = [i for i, a in enumerate(answers) if a is not None]
        rewards = [0.0] * len(answers)
        unscored: set[int] = set()
        if todo:
            warm("gym_warm", self.dataset, self.config_json)
            outcomes = sandboxed(
                "gym_score", [(self.dataset, self.config_json, answers[i], examples[i].data["entry"]) for i in todo]
            )
            for i, out in zip(todo, outcomes):
                if out.unscored:
                    unscored.add(i)
                value = out.value if out.ok and isinstance(out.value, (int, float)) else 0.0
                rewards[i] = min(1.0, max(0.0, float(value)))
        return [
            Score(None, None, 0.0, False)
            if a is None
            else Score(a, normalise(a), r, r >= 1.0 and i not in unscored, unscored=i in unscored)
            for i, (a, r) in enumerate(zip(answers, rewards))
        ]

    def score(self, example: Example, completion: str) -> Score:
        return self.score_batch([example], [completion])[0]


def gym_answer(completion: str, integer_fallback: bool) -> str | None:
    """The last <answer> tag (blank counts: reasoning-gym judges it); without one, when `integer_fallback`,
    the completion's final number if it is an integer."""
    answer = last_tag(completion)
    if answer is None and integer_fallback:
        number = extract_final_number(completion)
        value = parse_number(number) if number is not None else None
        answer = str(value) if value is not None and value.denominator == 1 else None
    return answer


def _is_integer(answer: object) -> bool:
    return isinstance(answer, int) or (isinstance(answer, str) and answer.strip().lstrip("-").isdigit())
