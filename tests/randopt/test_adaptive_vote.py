"""The adaptive vote: ask experts in rank order and stop once the vote is decided."""

from __future__ import annotations

import itertools
import random

import pytest

from thickets.randopt.vote import adaptive_vote, beta_lead_probability, decided, majority_vote
from thickets.tasks import Score


def S(key: str | None) -> Score:
    return Score(key, key, 0.0, key == "right")


def test_the_exact_rule_never_changes_the_answer_on_every_vote_of_up_to_seven_experts():
    """Every sequence of answers from an alphabet of three keys and 'no answer', K = 1..7: the adaptive
    vote returns the very Score the full vote returns (the best-ranked winner's), asking at most K."""
    for k in range(1, 8):
        for answers in itertools.product(["a", "b", "c", None], repeat=k):
            scores = [S(a) for a in answers]
            won, asked = adaptive_vote(scores, k, "exact")
            assert won is majority_vote(scores), (answers, asked)
            assert 1 <= asked <= k


def test_the_exact_rule_stops_as_soon_as_no_rival_can_catch_up():
    assert adaptive_vote([S("a")] * 5, 5) == (S("a"), 3)  # 3 votes; 2 left cannot make a rival 3
    assert decided([S("a"), S("a")], 3)  # 2 votes; 1 left
    assert not decided([S("a"), S("b")], 3)  # one vote each, one left: b could still reach 2
    # a tie goes to the key seen first, so a rival that can only draw level is beaten when seen later...
    assert decided([S("a"), S("a"), S("b")], 4)  # b: 1 + 1 = 2 = a's 2, and a was first
    # ...and not when it was seen first
    assert not decided([S("b"), S("a"), S("a")], 4)  # b: 1 + 1 = 2 ties a, and b was first
    assert not decided([S(None), S(None)], 3)  # nothing extracted: no leader yet
    assert decided([S(None)] * 3, 3)  # all asked


def test_off_asks_everyone_and_beta_stops_earlier_at_a_measured_risk():
    assert adaptive_vote([S("a")] * 9, 9, "off")[1] == 9
    assert adaptive_vote([S("a")] * 9, 9, "exact")[1] == 5
    # Beta(5, 1): P(p > 1/2) = 1 - 2**-5 = 0.969 >= 0.95 after four agreeing answers (3: 0.9375)
    assert adaptive_vote([S("a")] * 9, 9, "beta")[1] == 4
    rng = random.Random(0)
    changed = 0
    for _ in range(2000):  # noisy experts: the beta rule can change an answer, the exact rule never
        answers = [S(rng.choice("aab")) for _ in range(9)]
        changed += adaptive_vote(answers, 9, "beta")[0] is not majority_vote(answers)
        assert adaptive_vote(answers, 9, "exact")[0] is majority_vote(answers)
    assert 0 < changed < 400
    with pytest.raises(ValueError, match="unknown adaptive rule"):
        decided([S("a")], 3, "sometimes")


def test_the_beta_lead_probability_is_the_beta_tail():
    assert beta_lead_probability(0, 0) == pytest.approx(0.5)
    assert beta_lead_probability(1, 0) == pytest.approx(0.75)  # Beta(2, 1): 1 - 0.5**2
    assert beta_lead_probability(2, 2) == pytest.approx(0.5)
    # against a midpoint integral of the Beta(4, 2) density, 20 x^3 (1 - x), over (1/2, 1)
    n = 100_000
    integral = sum(20 * x**3 * (1 - x) for x in ((0.5 + (i + 0.5) / (2 * n)) for i in range(n))) / (2 * n)
    assert beta_lead_probability(3, 1) == pytest.approx(integral, abs=1e-6)
