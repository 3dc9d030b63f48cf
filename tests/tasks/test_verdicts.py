"""Verdicts a careful human grader would give: GSM8K numbers, multiple choice, MATH boxes, Countdown.

Each case here was judged wrongly before (the grader's mistake would have become the experts' skill).
"""

from __future__ import annotations

import json

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import get_task
from thickets.tasks.answers import (
    extract_choice,
    extract_final_number,
    last_boxed,
    parse_number,
)
from thickets.tasks.base import Example
from thickets.tasks.countdown import CountdownTask


def task_of(tmp_path, kind, rows):
    p = tmp_path / f"{kind}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return get_task(f"{kind}:{p}")


# -- GSM8K ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, completion, correct",
    [
        ("#### 50", "So the discount is #### 50%", True),  # a percent question's gold is the bare number
        ("#### 0.5", "#### 50%", True),  # and where the gold is the fraction, the percent still names it
        ("#### 50", "#### 0.5", False),
        ("#### 12345", "#### 1,2345", False),  # a malformed thousands group is not a number
        ("#### 1234", "#### 1,2345", False),  # and certainly not 1234
        ("#### 1234567", "#### 1,234,567", True),
        ("#### -5", "#### \u22125", True),  # U+2212 minus
        ("#### -5", "The answer is \u20135.", True),  # en dash
        ("#### -5", "#### \u20125", True),  # figure dash
        ("#### 72", "The answer isn't 79, it's 72", True),  # "answer is" needs a word boundary
        ("#### 20", "It spans pages 10-20", True),  # a dash after a digit is a range, not a sign
        ("#### -20", "It spans pages 10-20", False),
    ],
)
def test_gsm8k_verdicts(tmp_path, gold, completion, correct):
    task = task_of(tmp_path, "gsm8k", [{"question": "q", "answer": gold}])
    ex = task.example_from_row({"question": "q", "answer": gold})
    assert task.score(ex, completion).correct is correct


def test_gsm8k_number_reading():
    assert parse_number("1,2345") is None and parse_number("12,34") is None
    assert parse_number("1,234.5") == parse_number("1234.5")
    assert parse_number("50%") == 50
    assert extract_final_number("#### \u221212") == "-12"


# -- multiple choice ----------------------------------------------------------------------------

ARC = {
    "question": "Which is a mammal?",
    "choices": {"text": ["shark", "whale", "trout", "squid"], "label": ["1", "2", "3", "4"]},
    "answerKey": "2",
}
DIGITS = {"question": "2 + 1?", "choices": ["1", "2", "3", "4"], "answer": "3"}
MMLU = {"question": "Pick", "choices": ["1", "2", "3", "4"], "answer": 3}


def test_gold_letters_go_through_the_rows_own_labels_and_choice_text(tmp_path):
    task = task_of(tmp_path, "mc", [ARC, DIGITS, MMLU])
    assert task.example_from_row(ARC).data["answer"] == "B"  # label "2" is the second choice, not index 2
    assert task.example_from_row(DIGITS).data["answer"] == "C"  # the choice whose text is "3"
    assert task.example_from_row(MMLU).data["answer"] == "D"  # a JSON integer is a 0-based index
    with pytest.raises(ThicketsError, match="not one of the choice labels"):
        task.example_from_row({**ARC, "answerKey": "E"})


@pytest.mark.parametrize(
    "completion, letter",
    [
        ("A careful look shows (B)", "B"),  # the article is not choice A
        ("I cannot determine it.", None),  # the pronoun is not choice I
        ("The answer is a bit unclear", None),
        ("The answer is I think (B)", "B"),
        ("the answer is b", "B"),
        ("The answer is A because whales breathe air", "A"),
        ("Answer: I", "I"),
        ("B. whale", "B"),
        ("(C)", "C"),
    ],
)
def test_articles_and_pronouns_are_not_choices(completion, letter):
    assert extract_choice(completion, 9) == letter


def test_a_reply_that_is_a_choices_text_names_it(tmp_path):
    task = task_of(tmp_path, "mc", [DIGITS])
    ex = task.example_from_row(DIGITS)
    s = task.score(ex, "3")
    assert s.answer == "C" and s.correct
    assert task.score(ex, "4").answer == "D" and not task.score(ex, "4").correct


# -- MATH ----------------------------------------------------------------------------------------


def test_boxed_without_braces_is_read():
    assert last_boxed("so $\\boxed 5$.") == "5"
    assert last_boxed("\\boxed 12") == "12"
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed 3") == "3"


def test_equivalent_math_answers_vote_together_and_are_correct(tmp_path):
    row = {"problem": "Half?", "answer": "\\frac{1}{2}"}
    task = task_of(tmp_path, "math", [row])
    ex = task.example_from_row(row)
    scores = [task.score(ex, f"\\boxed{{{a}}}") for a in ("1/2", "50\\%", "x=\\frac12", "0.5", "\\frac{1}{2}")]
    assert all(s.correct for s in scores), [s.answer for s in scores]
    assert len({s.vote_key for s in scores}) == 1 and scores[0].vote_key is not None
    assert task.score(ex, "\\boxed 0.5").correct
    assert task.score(ex, "\\boxed{\\frac13}").vote_key != scores[0].vote_key


# -- Countdown ------------------------------------------------------------------------------------


def _countdown(answer: str, numbers=(3, 5, 2), target=13):
    ex = Example("c", "", {"numbers": list(numbers), "target": target})
    return CountdownTask().score(ex, f"<answer>{answer}</answer>")


def test_countdown_checks_the_claimed_result():
    assert not _countdown("3*5-2 = 12").correct  # value 13, claimed 12: a false equation
    assert _countdown("3*5-2 = 13").correct
    assert _countdown("3*5-2").correct


def test_countdown_takes_a_leading_unary_plus():
    assert _countdown("+3*5-2").correct


def test_countdown_equations_with_numbers_not_given_do_not_vote():
    from thickets.randopt.vote import majority_vote

    invented = [_countdown("10+3"), _countdown("11+2")]  # 13, but from numbers that were not given
    real = _countdown("3*5-2")
    assert all(s.vote_key is None for s in invented) and real.vote_key is not None
    winner = majority_vote(invented + [real])  # two invented answers cannot outvote one real one
    assert winner is not None and winner.correct


@pytest.mark.parametrize(
    "completion, reward, correct",
    [
        ("I add.</think>\n<answer>3*5-2</answer>", 1.1, True),  # the exact format: the full 0.1
        ("I add.</think> <answer>3*5-2</answer>", 1.06, True),  # think + answer blocks, not the exact format
        ("<answer>3*5-2</answer>", 1.05, True),  # an answer block alone
        ("I add.</think>\n<answer>3*5-2 = 13</answer>", 0.1, False),  # '=' is outside their character filter
        ("I add.</think>\n<answer>2*5+2+1</answer>", 0.1, False),  # a number that was not given
        ("I add.</think>\n<answer>(3**2)+5-1</answer>", 0.1, False),  # their eval would allow a power; we refuse it
        ("nothing to see", 0.0, False),
    ],
)
def test_countdown_paper_scores_as_the_authors_code(completion, reward, correct):
    from thickets.tasks.countdown import CountdownPaperTask

    task = CountdownPaperTask()
    s = task.score(Example("c", "", {"numbers": [3, 5, 2], "target": 13}), completion)
    assert s.reward == pytest.approx(reward) and s.correct is correct
    assert task.system_prompt.startswith("You are a helpful assistant. You first think")
    assert "each number can only be used once" in next(iter(task.examples(0))).prompt


def test_countdown_paper_checks_the_answer_as_written_but_lets_it_vote_stripped():
    from thickets.tasks.countdown import CountdownPaperTask

    s = CountdownPaperTask().score(
        Example("c", "", {"numbers": [3, 5, 2], "target": 13}), "I add.</think>\n<answer>\n3*5-2\n</answer>"
    )
    assert not s.correct and s.reward == pytest.approx(0.1)  # their reward: a newline fails the filter
    assert s.vote_key == "2,3,5=13"  # their vote strips the answer first
