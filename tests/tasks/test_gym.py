"""reasoning-gym tasks by name, scored by reasoning-gym's own scorer."""

from __future__ import annotations

import itertools

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits

pytestmark = pytest.mark.timeout(120)  # a hang guard: adversarial input must not make it hang


def first(task, seed=0):
    return next(iter(task.examples(seed)))


def test_examples_are_deterministic_per_seed_and_splits_disjoint():
    task = get_task("gym:letter_counting")
    a = [e.id for e in itertools.islice(task.examples(3), 5)]
    assert a == [e.id for e in itertools.islice(get_task("gym:letter_counting").examples(3), 5)]
    assert a != [e.id for e in itertools.islice(task.examples(4), 5)]
    val, test = make_splits(task, 0, 10, 10)
    assert {e.id for e in val}.isdisjoint(e.id for e in test)


def test_tagged_answers_are_scored_by_reasoning_gym():
    task = get_task("gym:letter_counting")
    ex = first(task)
    gold = str(ex.data["entry"]["answer"])
    right = task.score(ex, f"Counting... <answer>{gold}</answer>")
    assert right.correct and right.reward == 1.0 and right.vote_key == gold
    wrong = task.score(ex, f"<answer>{int(gold) + 1}</answer>")
    assert not wrong.correct and wrong.reward < 1.0


def test_integer_answers_without_tags_fall_back_to_the_final_number():
    task = get_task("gym:letter_counting")
    ex = first(task)
    gold = int(ex.data["entry"]["answer"])
    assert task.score(ex, f"The letter appears {gold} times.").correct
    assert task.score(ex, "I cannot count.").answer is None
    # a string-answer task has no fallback: untagged text is not an answer
    words = get_task("gym:spell_backward")
    assert words.score(first(words), "the answer is olleh").answer is None


def test_partial_credit_counts_in_the_reward_only():
    task = get_task("gym:number_sorting")
    ex = first(task)
    s = task.score(ex, "<answer>not a list</answer>")
    assert not s.correct and 0.0 <= s.reward < 1.0


def test_unknown_gym_task_is_refused():
    with pytest.raises(ThicketsError, match="unknown reasoning-gym task 'no_such'"):
        get_task("gym:no_such")


def test_adversarial_completions_are_fast():
    task = get_task("gym:letter_counting")
    ex = first(task)
    for completion in (
        "7" * 1_000_000,
        "<answer>" * 100_000,
        "x" * 1_000_000 + "<answer>1</answer>",
        "<answer>" + "9" * 100_000 + "</answer>",
        "#### ٧",
        "<think><answer>3</think>",
    ):
        task.score(ex, completion)  # returns (the module's hang guard)
