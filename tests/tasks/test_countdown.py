"""Countdown: reachable, deterministic examples and a scorer that is exact and fast on hostile text."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from thickets.tasks.base import Example, Task
from thickets.tasks.countdown import CountdownTask

pytestmark = pytest.mark.timeout(120)  # a hang guard: adversarial input must not make it hang


def _reachable(numbers: list[int], target: int) -> bool:
    """Brute force over every way to combine all numbers pairwise with + - * / (exact fractions)."""

    def go(pool: tuple[Fraction, ...]) -> bool:
        if len(pool) == 1:
            return pool[0] == target
        for i, j in itertools.permutations(range(len(pool)), 2):
            a, b = pool[i], pool[j]
            rest = tuple(x for k, x in enumerate(pool) if k not in (i, j))
            results = [a + b, a - b, a * b] + ([a / b] if b else [])
            if any(go(rest + (r,)) for r in results):
                return True
        return False

    return go(tuple(map(Fraction, numbers)))


def _example(numbers, target) -> Example:
    return Example(id="t", prompt="", data={"numbers": numbers, "target": target})


def _score(completion: str, numbers=(1, 2, 3), target=9):
    return CountdownTask().score(_example(list(numbers), target), completion)


def test_protocol():
    task = CountdownTask()
    assert isinstance(task, Task)
    assert task.name == "countdown" and task.stop == ("</answer>",) and task.system_prompt is None


def test_examples_deterministic_and_reachable():
    task = CountdownTask()
    a = list(itertools.islice(task.examples(0), 200))
    assert a == list(itertools.islice(task.examples(0), 200))
    assert [e.id for e in a] != [e.id for e in itertools.islice(task.examples(1), 200)]
    assert {len(e.data["numbers"]) for e in a} == {3, 4}
    for e in a:
        numbers, target = e.data["numbers"], e.data["target"]
        assert all(1 <= n <= 99 for n in numbers) and 1 <= target <= 1000
        assert e.id == f"countdown:{','.join(map(str, numbers))}:{target}"
        assert str(numbers) in e.prompt and str(target) in e.prompt and "<answer>" in e.prompt
        assert _reachable(numbers, target), e.id


@pytest.mark.parametrize(
    "completion, reward, correct",
    [
        ("<think>easy</think> <answer> (1 + 2) * 3 </answer>", 1.1, True),
        ("<answer>3 * (2 + 1)</answer>", 1.1, True),
        ("<answer>(1+2)*3 = 9</answer>", 1.1, True),
        ("<answer>(1+2)*3 = 10</answer>", 0.1, False),  # a false claimed result makes the equation false
        ("<answer>+1+2*3+0</answer>", 0.1, False),  # unary plus parses; 0 is not a given number
        ("<answer>1 + 2 + 3</answer>", 0.1, False),  # wrong value
        ("<answer>(1 + 2) * 3 * 1</answer>", 0.1, False),  # reused number
        ("<answer>3 * 3</answer>", 0.1, False),  # reused, missing numbers
        ("<answer>(4 + 5)</answer>", 0.1, False),  # wrong numbers
        ("<answer>9</answer>", 0.1, False),
        ("<answer>(1 + 2) ** 3</answer>", 0.1, False),
        ("<answer>9**9**9**9</answer>", 0.1, False),
        ("<answer>__import__('os').system('true')</answer>", 0.1, False),
        ("<answer>(1 + 2) * 3</answer> <answer>1+2+3</answer>", 0.1, False),  # the last answer counts
        ("<answer>1+2+3</answer> <answer>(1 + 2) * 3</answer>", 1.1, True),
        ("<answer>1+2+3</answer> <answer>(1 + 2) * 3", 0.1, False),  # unclosed last answer is ignored
        ("<answer><answer>(1 + 2) * 3</answer>", 1.1, True),
        ("(1 + 2) * 3", 0.0, False),
        ("<answer>(1 + 2) * 3", 0.0, False),
        ("<answer>  </answer>", 0.0, False),
        ("", 0.0, False),
    ],
)
def test_rewards(completion, reward, correct):
    s = _score(completion)
    assert s.reward == pytest.approx(reward) and s.correct is correct
    assert s.extracted == (reward > 0)


def test_division_exactness():
    assert _score("<answer>8 / 3 * 3</answer>", (8, 3, 3), 8).correct  # exact, no float error
    assert not _score("<answer>7 / 2 + 1</answer>", (7, 2, 1), 4).correct  # 4.5, not 4
    assert _score("<answer>7 / (2 - 2)</answer>", (7, 2, 2), 4).reward == pytest.approx(0.1)


def test_vote_keys():
    a, b = _score("<answer>(1+2)*3</answer>"), _score("<answer> 3 * (2 + 1) = 9 </answer>")
    assert a.vote_key == b.vote_key == "1,2,3=9"
    assert a.answer == "(1+2)*3"
    assert _score("<answer>1+2+3</answer>").vote_key == "1,2,3=6" != a.vote_key  # wrong, but a real attempt
    assert _score("<answer>7/2</answer>").vote_key is None  # numbers that were not given never vote
    assert _score("<answer>(1+2)*3*1</answer>").vote_key is None  # nor does a reused one
    assert _score("<answer>2^3</answer>").vote_key is None
    assert _score("no answer").vote_key is None


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>" + "1+" * 500_000 + "1</answer>",
        "<answer>" + "(" * 100_000 + "1" + ")" * 100_000 + "</answer>",
        "<answer>" * 200_000 + "1</answer>",
        "<answer>1</answer>" * 70_000,
        "</answer>" * 120_000,
        "<answer>" + "*".join(["99999"] * 8) + "</answer>",
        "<answer>" + "\u0663" * 100 + "</answer>",
        "x" * 10**6,
    ],
)
def test_adversarial(completion):
    s = _score(completion)
    assert not s.correct and s.reward <= 0.1 + 1e-9
