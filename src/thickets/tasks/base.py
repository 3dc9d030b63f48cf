"""The task contract: pure Python, no torch, so tasks can be tested and scored anywhere.

A task is a deterministic stream of examples plus a scorer. Reward (what the search
maximises) and correctness (what accuracy and the ensemble count) are kept apart, because
some tasks give partial credit or a format bonus that must never count as "correct".

`Task` names every hook the rest of thickets may use, each with a default, so no caller
probes a task for attributes. `duplicate_key` says which examples are one question, so the train
split holds no near-copy of a held-out one. `extract` is the gold-free half of `score`: the answer and vote key
of a completion to a prompt that has no reference answer (a user's own prompt, answered by a vote
of several models); wherever the key does not depend on the example, a task's `extract` gives what
its `score` does. A task written without the base class (any object with `name`,
`description`, `stop`, `system_prompt`, `examples` and `score`) is wrapped by `as_task`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from thickets.tasks.extract import last_tag, normalise


@dataclass(frozen=True)
class Example:
    """One task instance. `id` is stable across runs and names the example in the run store."""

    id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """How one completion fared on one example.

    `answer` is None when nothing could be extracted; such answers never vote.
    `vote_key` is the normalised answer: answers with the same key vote together.
    `unscored`: the scorer failed twice for a reason that is not the answer's (it crashed, or stalled on a
    busy machine), so there is no verdict; reward and correct are then 0 and False but mean nothing, and
    means over examples (Summary) leave the row out.
    """

    answer: str | None
    vote_key: str | None
    reward: float
    correct: bool
    unscored: bool = False

    @property
    def extracted(self) -> bool:
        return self.answer is not None


class ScoredExample(NamedTuple):
    """One row of a model's results: the example's position in its split, the example, what the
    model wrote, and how that scored."""

    position: int
    example: Example
    completion: str
    score: Score


_NONE: Mapping[str, Mapping[str, str]] = MappingProxyType({})


class Task:
    """Every hook a task may have, with its default. Subclasses set `name` and `description` and
    implement `examples` and `score`; the rest is optional."""

    name: str = "task"
    description: str = ""
    #: strings that end generation early (the completion is cut after them)
    stop: tuple[str, ...] = ()
    #: a system message for chat models, or None to use the model's default
    system_prompt: str | None = None
    #: the bounds of one reward, which racing relies on; None when unknown (a user's reward function)
    reward_range: tuple[float, float] | None = (0.0, 1.0)
    #: files and functions the task reads, {role: {"path" or "function", "sha256"}}: a run refuses to
    #: go on when one changes
    sources: Mapping[str, Mapping[str, str]] = _NONE
    #: PyPI packages whose code makes the examples or the verdicts; their versions are recorded
    packages: tuple[str, ...] = ()
    #: True for a task with no verifier of its own (prompts only): it needs a --reward function
    needs_reward: bool = False
    #: for several tasks in one run: {name: task}; None for a single task
    parts: Mapping[str, Task] | None = None
    #: True when each example comes with an image (`image_of`) a vision-language model must see
    images: bool = False

    def examples(self, seed: int) -> Iterator[Example]:
        """A deterministic stream of examples for this seed (finite or endless)."""
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> Score:
        """Extract, check and reward one completion. Must be fast on adversarial text."""
        raise NotImplementedError

    def duplicate_key(self, example: Example) -> str:
        """Equal for examples that are one question asked twice, so the train split can leave out every
        near-copy of a validation or test question. The default: the prompt as `duplicate_text` reads
        it; a task with other equivalences (numbers that commute) overrides this."""
        return duplicate_text(example.prompt)

    def image_of(self, example: Example) -> bytes | None:
        """The encoded image (PNG, JPEG, ...) an example asks about, for a task with `images`; else None."""
        return None

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """(answer, vote key) of a completion, with no gold answer to judge it by: what a vote of
        answers to a user's own prompt needs. (None, None) when nothing can be extracted.

        The default: the last complete <answer>...</answer> tag, its normalised text the vote key
        (a blank tag is no answer). A task whose `score` extracts otherwise overrides this, so that
        it gives `score`'s answer and vote key on every example whose key does not need the gold."""
        return tagged_answer(completion)

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        """Scores for many completions at once (a sandboxed or user scorer takes them in one call)."""
        return [self.score(ex, c) for ex, c in zip(examples, completions)]

    def check(self, examples: Sequence[Example]) -> None:
        """Fail now, before any model loads, on what would fail later (a user's reward function)."""

    def example_from_row(self, row: Mapping[str, Any]) -> Example:
        """An example from user-written JSON (`thickets score`): {prompt, data}, or the data itself."""
        data = row.get("data")
        if isinstance(data, dict):
            return Example(id=str(row.get("id", "example")), prompt=str(row.get("prompt", "")), data=data)
        return Example(id=str(row.get("id", "example")), prompt=str(row.get("prompt", "")), data=dict(row))


class _Adapted(Task):
    """A task object written without the base class, given the base class's defaults for what it lacks."""

    def __init__(self, inner: Any):
        self.inner = inner
        for hook in (
            "name",
            "description",
            "stop",
            "system_prompt",
            "reward_range",
            "sources",
            "packages",
            "needs_reward",
            "images",
        ):
            if hasattr(inner, hook):
                setattr(self, hook, getattr(inner, hook))

    def examples(self, seed: int) -> Iterator[Example]:
        return iter(self.inner.examples(seed))

    def score(self, example: Example, completion: str) -> Score:
        result: Score = self.inner.score(example, completion)
        return result

    def duplicate_key(self, example: Example) -> str:
        if hasattr(self.inner, "duplicate_key"):
            return str(self.inner.duplicate_key(example))
        return super().duplicate_key(example)

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        if hasattr(self.inner, "extract"):
            answer, key = self.inner.extract(completion)
            return answer, key
        return super().extract(completion)

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        if hasattr(self.inner, "score_batch"):
            return list(self.inner.score_batch(examples, completions))
        return super().score_batch(examples, completions)

    def check(self, examples: Sequence[Example]) -> None:
        if hasattr(self.inner, "check"):
            self.inner.check(examples)

    def image_of(self, example: Example) -> bytes | None:
        if hasattr(self.inner, "image_of"):
            image: bytes | None = self.inner.image_of(example)
            return image
        return None

    def example_from_row(self, row: Mapping[str, Any]) -> Example:
        if hasattr(self.inner, "example_from_row"):
            result: Example = self.inner.example_from_row(row)
            return result
        return super().example_from_row(row)


#: sentence punctuation; a '.', ',' or ':' between two digits is part of a number and stays
_PUNCTUATION = re.compile(r"[!?;\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026\u00bf\u00a1]|(?<!\d)[.,:]|[.,:](?!\d)")


def duplicate_text(text: str) -> str:
    """A text as a duplicate key: Unicode forms, case, whitespace and sentence punctuation do not make
    two questions different; operators, brackets and the digits of a number do."""
    return normalise(_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text)))


def tagged_answer(completion: str) -> tuple[str | None, str | None]:
    """(the last <answer> tag's text, its normalised text); (None, None) when there is none or it is blank."""
    answer = last_tag(completion)
    return (answer, normalise(answer)) if answer else (None, None)


def as_task(obj: Any) -> Task:
    """A Task: the object itself when it derives from Task, else wrapped with the defaults."""
    return obj if isinstance(obj, Task) else _Adapted(obj)
