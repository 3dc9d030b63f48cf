"""The trace filter keeps exactly the traces a distilled model should learn from."""

import pytest

from thickets.distill.traces import Trace, keep, mode_for, vote_keys
from thickets.errors import ThicketsError
from thickets.tasks import Score, get_task


def T(q, rank, key, correct=False, sample=0, text=None):
    return Trace(q, rank, sample, text or f"{q}/{rank}/{sample}:{key}", Score(key, key, float(correct), correct))


def test_gold_mode_keeps_the_correct_traces_best_expert_first_at_most_m_a_question():
    traces = [
        T("q1", 2, "5", True),
        T("q1", 1, "4"),
        T("q1", 3, "5", True),
        T("q1", 1, "5", True, sample=1),
        T("q2", 1, None),
        T("q2", 2, "9", True),
    ]
    kept = keep(traces, "gold", max_per_question=2)
    assert [(t.example_id, t.expert_rank, t.sample) for t in kept] == [("q1", 1, 1), ("q1", 2, 0), ("q2", 2, 0)]


def test_vote_mode_keeps_the_traces_that_agree_with_each_questions_vote():
    traces = [
        T("q1", 1, "4"),
        T("q1", 2, "5"),
        T("q1", 3, "5"),
        T("q1", 4, None),
        T("q2", 1, "7"),
        T("q2", 2, "8"),  # a tie goes to the best-ranked expert's answer
        T("q3", 1, None),
    ]
    assert vote_keys(traces) == {"q1": "5", "q2": "7"}
    kept = keep(traces, "vote", max_per_question=8)
    assert [(t.example_id, t.expert_rank) for t in kept] == [("q1", 2), ("q1", 3), ("q2", 1)]


def test_the_same_text_twice_is_kept_once():
    traces = [T("q", 1, "5", True, text="same"), T("q", 2, "5", True, text="same"), T("q", 3, "5", True)]
    assert [t.expert_rank for t in keep(traces, "gold", 8)] == [1, 3]


def test_modes_follow_what_the_task_can_check():
    assert mode_for(get_task("products"), "auto") == "gold"
    prompts_only = get_task("products")
    prompts_only.needs_reward = True  # as a prompts-only task with a user's reward is
    assert mode_for(prompts_only, "auto") == "vote"
    with pytest.raises(ThicketsError, match="no answers to check traces against"):
        mode_for(prompts_only, "gold")
    with pytest.raises(ThicketsError, match="gives no vote keys"):
        keep([T("q", 1, None)], "vote", 8)


def test_traces_kept_in_earlier_rounds_stay_do_not_vote_and_count_towards_the_cap_and_the_texts():
    earlier = [T("q1", 0, "4", text="four"), T("q1", 0, "4", text="4"), T("q2", 0, "7")]
    new = [
        T("q1", 1, "5", text="four"),  # this round's experts vote 5 on q1, against the two earlier 4s;
        T("q1", 2, "5"),  # an earlier text is not kept twice, and the earlier two leave room for one
        T("q1", 3, "5"),
        T("q2", 1, "8"),
        T("q2", 2, "8"),
        T("q3", 1, None),  # no key among the new traces of q3; the earlier traces have keys
    ]
    kept = keep(new, "vote", max_per_question=3, earlier=earlier)
    assert [(t.example_id, t.expert_rank) for t in kept] == [("q1", 2), ("q2", 1), ("q2", 2)]
    assert keep(new, "gold", max_per_question=8, earlier=earlier) == []  # none correct; the earlier stay all the same
    assert keep([T("q3", 1, None)], "vote", 8, earlier=earlier) == []
