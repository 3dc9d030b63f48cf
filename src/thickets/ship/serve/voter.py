"""The ensemble as one model: a batch of prompts in, each answered by the vote of the run's top-K
experts, asking experts in rank order only while some prompt's vote is undecided.

This part knows nothing of HTTP: it is called by one worker thread (the engine is not thread-safe)
with prompts that share their generation settings. A dense expert is swapped in once per batch,
from a working copy kept in memory when K copies fit (else its noise is made again); low-rank
experts all answer in one batched pass (Engine.generate_population).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thickets.engines import Engine
from thickets.noise import PerturbationSpec, unmerged
from thickets.randopt.preflight import available_memory
from thickets.randopt.vote import adaptive_vote, decided
from thickets.tasks import Score, Task


@dataclass(frozen=True)
class Verdict:
    """One prompt's answer and how the vote reached it (the response's `thickets` field)."""

    text: str  # the returned completion: the best-ranked expert's among those with the winning answer
    expert: int  # its rank (1 = best on validation)
    answer: str | None  # the winning answer; None when no expert's answer could be extracted
    votes: dict[str, int]  # answer -> experts that gave it
    margin: int  # the winner's votes minus the runner-up's
    asked: int  # experts that answered this prompt
    k: int
    extracted: bool  # False: no answer could be read, and the best expert's completion is returned

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "votes": self.votes,
            "margin": self.margin,
            "experts_asked": self.asked,
            "k": self.k,
            "returned_expert": self.expert,
            "extracted": self.extracted,
        }


class Voter:
    """K experts (or the base: one expert, spec None) answering prompts together."""

    def __init__(
        self,
        engine: Engine,
        experts: Sequence[PerturbationSpec | None],
        task: Task,
        *,
        adaptive: str = "exact",
        keep_copies: bool | None = None,
    ):
        if not experts:
            raise ValueError("a vote needs at least one expert")
        self.engine, self.experts, self.task, self.adaptive = engine, list(experts), task, adaptive
        self.lowrank = len(experts) > 1 and all(e is not None and e.strategy == "lowrank" for e in experts)
        self.keep_copies = self._copies_fit() if keep_copies is None else keep_copies
        self._held: dict[int, Any] = {}

    def _copies_fit(self) -> bool:
        """K working copies in memory only when they take at most half of what is free now."""
        if any(e is not None and unmerged(e) for e in self.experts):
            return False  # an adapter applied unmerged: nothing to copy, and nothing to make again
        if self.lowrank or not hasattr(self.engine, "hold"):
            return False
        params = getattr(self.engine, "params", {})
        size = sum(p.numel() * p.element_size() for p in params.values())
        free = available_memory()
        return free is not None and size * len(self.experts) <= free // 2

    def _swap_in(self, r: int) -> None:
        spec = self.experts[r]
        if spec is None:
            return
        if r in self._held:
            self.engine.use(self._held[r])  # type: ignore[attr-defined]
            return
        self.engine.perturb(spec)
        if self.keep_copies:
            self._held[r] = self.engine.hold()  # type: ignore[attr-defined]

    def _one_expert(
        self,
        r: int,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str],
        special: bool,
        images: Sequence[bytes] | None,
    ) -> list[str]:
        self._swap_in(r)
        try:
            if images is not None:  # a vision-language engine (the server checked)
                texts: list[str] = self.engine.generate_images(prompts, images, max_new_tokens, stop)  # type: ignore[attr-defined]
                return texts
            return self.engine.generate(prompts, max_new_tokens, stop, add_special_tokens=special)
        finally:
            self.engine.restore()

    def answer(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        *,
        add_special_tokens: bool = False,
        images: Sequence[bytes] | None = None,
    ) -> list[Verdict]:
        """Each prompt's verdict; with an adaptive rule, a prompt leaves the batch once its vote is decided."""
        k = len(self.experts)
        texts: list[list[str]] = [[] for _ in prompts]
        scores: list[list[Score]] = [[] for _ in prompts]

        def record(i: int, text: str) -> None:
            answer, key = self.task.extract(text)
            texts[i].append(text)
            scores[i].append(Score(answer, key, 0.0, False))

        if self.lowrank and images is None:
            specs = [e for e in self.experts if e is not None]
            per_expert = self.engine.generate_population(
                specs, prompts, max_new_tokens, stop, add_special_tokens=add_special_tokens
            )
            for answers in per_expert:
                for i, text in enumerate(answers):
                    record(i, text)
        else:
            asking = list(range(len(prompts)))
            for r in range(k):
                if not asking:
                    break
                pictures = None if images is None else [images[i] for i in asking]
                out = self._one_expert(
                    r, [prompts[i] for i in asking], max_new_tokens, stop, add_special_tokens, pictures
                )
                for i, text in zip(asking, out):
                    record(i, text)
                asking = [i for i in asking if not decided(scores[i], k, self.adaptive)]
        return [self._verdict(t, s, k) for t, s in zip(texts, scores)]

    def _verdict(self, texts: list[str], scores: list[Score], k: int) -> Verdict:
        # the answers up to where the rule stops: all of them, unless low-rank experts all answered at once
        won, asked = adaptive_vote(scores, k, self.adaptive)
        texts, scores = texts[:asked], scores[:asked]
        keys = [s.vote_key for s in scores if s.vote_key is not None]
        counts = Counter(keys)
        shown = {key: next(s.answer for s in scores if s.vote_key == key) or key for key in counts}
        votes = {shown[key]: n for key, n in counts.most_common()}
        if won is None:
            return Verdict(texts[0], 1, None, {}, 0, asked, k, False)
        at = next(i for i, s in enumerate(scores) if s.vote_key == won.vote_key)
        ranked = sorted(counts.values(), reverse=True) + [0]
        return Verdict(texts[at], at + 1, won.answer, votes, ranked[0] - ranked[1], asked, k, True)
