"""The task protocol: pure Python, no torch, so tasks can be tested and scored anywhere.

A task is a deterministic stream of examples plus a scorer. Reward (what the search
maximises) and correctness (what accuracy and the ensemble count) are kept apart, because
some tasks give partial credit or a format bonus that must never count as "correct".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class Example:
    """One task instance. `id` is stable across runs and used to keep splits disjoint."""

    id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """How one completion fared on one example.

    `answer` is None when nothing could be extracted; such answers never vote.
    `vote_key` is the normalised answer: answers with the same key vote together.
    """

    answer: str | None
    vote_key: str | None
    reward: float
    correct: bool

    @property
    def extracted(self) -> bool:
        return self.answer is not None


@runtime_checkable
class Task(Protocol):
    name: str
    description: str
    #: strings that end generation early (the completion is cut after them)
    stop: tuple[str, ...]
    #: a system message for chat models, or None to use the model's default
    system_prompt: str | None
    # optional: `reward_range = (low, high)`, the bounds racing relies on; (0, 1) when absent

    def examples(self, seed: int) -> Iterator[Example]:
        """A deterministic stream of examples for this seed (finite or endless)."""
        ...

    def score(self, example: Example, completion: str) -> Score:
        """Extract, check and reward one completion. Must be fast on adversarial text."""
        ...
