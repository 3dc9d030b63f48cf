"""The voter and the batcher on their own, with a scripted engine: which text is returned, which experts
are asked, and what a batch leaves out."""

from __future__ import annotations

import asyncio

from tests.support import ToyTask
from thickets.noise import PerturbationSpec
from thickets.ship.serve.batcher import Batcher, Settings
from thickets.ship.serve.voter import Voter


class Scripted:
    """Expert r (its spec's seed) answers prompt p with script[p][r]; records who was asked what."""

    tokenizer = None

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.asked, self.now = script, [], None

    def perturb(self, spec: PerturbationSpec) -> None:
        self.now = spec.seed

    def restore(self) -> None:
        self.now = None

    def generate(self, prompts, max_new_tokens, stop=(), *, add_special_tokens=False):
        self.asked.append((self.now, list(prompts)))
        return [self.script[p][self.now] for p in prompts]


SPECS = [PerturbationSpec(r, 0.01) for r in range(5)]


def test_the_best_ranked_text_among_the_winners_is_returned_with_the_votes_and_margin():
    engine = Scripted({"q": ["xylophone", "apple", "avocado", "zebra", "almond"]})
    (v,) = Voter(engine, SPECS, ToyTask(), adaptive="off", keep_copies=False).answer(["q"], 8)
    # expert 1 says x; a wins 3 to 1 to 1, and expert 2 is the best-ranked of a's voters
    assert (v.answer, v.expert, v.text) == ("a", 2, "apple")
    assert v.votes == {"a": 3, "x": 1, "z": 1} and v.margin == 2 and v.asked == 5 and v.extracted


def test_experts_are_asked_only_while_a_prompt_is_undecided():
    script = {"agree": ["apple", "avocado", "almond", "zebra", "xylophone"], "split": ["apple", "zebra", "x", "a", "b"]}
    engine = Scripted(script)
    decided, split = Voter(engine, SPECS, ToyTask(), adaptive="exact", keep_copies=False).answer(["agree", "split"], 8)
    # three a's of five cannot be overtaken: experts 4 and 5 never see the first prompt
    assert decided.asked == 3 and decided.answer == "a"
    # a, z, x, then a again: z could only draw level with a, and a was seen first, so expert 5 is not asked
    assert [prompts for _, prompts in engine.asked] == [["agree", "split"]] * 3 + [["split"]]
    assert split.asked == 4 and split.answer == "a" and split.expert == 1 and split.votes == {"a": 2, "z": 1, "x": 1}


def test_a_request_cancelled_while_its_batch_gathers_is_left_out():
    seen: list[list[str]] = []

    def answer(prompts, settings, images):
        seen.append(list(prompts))
        return [f"answer to {p}" for p in prompts]

    batcher = Batcher(answer, max_batch=8, window_s=0.5)
    s = Settings(4, (), False)

    async def go():
        kept = batcher.submit("stays", s)
        gone = batcher.submit("leaves", s)
        gone.cancel()  # the client went away before the batch was answered
        return await kept

    assert asyncio.run(go()) == "answer to stays"
    batcher.close(5)
    assert seen == [["stays"]] and not batcher.thread.is_alive()
