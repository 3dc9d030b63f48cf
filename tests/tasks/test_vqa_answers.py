"""Short answers normalised as the VQA and GQA evaluations do (issue 28's `vqa` kind builds on this)."""

from __future__ import annotations

import pytest

from thickets.tasks.vqa_answers import vqa_normal_form, vqa_score


@pytest.mark.parametrize(
    "given, normal",
    [
        ("Two.", "2"),
        ("The red square", "red square"),
        ("a cat", "cat"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("Yes!", "yes"),
        ("  RED\n", "red"),
        ("t-shirt", "t shirt"),
        ("dont know", "don't know"),
        ("don't know", "don't know"),
        ("(left)", "left"),
        ("", ""),
        ("the", ""),
    ],
)
def test_answers_take_the_vqa_evaluations_normal_form(given, normal):
    assert vqa_normal_form(given) == normal


def test_an_answer_scores_as_vqa_and_gqa_score_it():
    humans = ["red", "red", "Red.", "dark red", "red", "red", "maroon", "red", "red", "red"]
    assert vqa_score("RED", humans) == 1.0
    assert vqa_score("maroon", humans) == pytest.approx(1 / 3)
    assert vqa_score("blue", humans) == 0.0
    assert vqa_score("two", ["2"]) == 1.0  # GQA: one answer, exact after the cleaning
    assert vqa_score("the", ["the"]) == 0.0  # nothing left to compare
    assert vqa_score("x" * 10_000, ["x"]) == 0.0  # bounded work on a long answer
