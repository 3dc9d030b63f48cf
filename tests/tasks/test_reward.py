"""Bring-your-own reward: TRL GRPO reward functions used unchanged, and bad ones stopped before any write."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from thickets.cli.commands import main
from thickets.errors import ThicketsError
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.randopt.store import DB_NAME
from thickets.tasks import get_task, score_one
from thickets.tasks.splits import make_splits

FIXTURE = Path(__file__).parents[1] / "fixtures" / "grpo_reward.py"
ROWS = [{"prompt": f"What is {i} + {i}? Answer in <answer></answer> tags.", "answer": str(2 * i)} for i in range(8)]


def data(tmp_path, rows=ROWS, name="prompts.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_a_chat_style_grpo_reward_works_unchanged_and_receives_the_columns(tmp_path):
    task = get_task(f"prompts:{data(tmp_path)}", reward=f"{FIXTURE}:correctness_reward")
    val, _ = make_splits(task, 0, 4)
    task.check(val)
    assert task.style == "chat"
    completions = [
        f"<answer>{ex.data['row']['answer']}</answer>" if i % 2 == 0 else "<answer>nope</answer>"
        for i, ex in enumerate(val)
    ]
    scores = task.score_batch(val, completions)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0, 0.0]
    assert [s.correct for s in scores] == [True, False, True, False]  # prompts-only: correct = reward reaches 1
    assert scores[1].answer == "nope" and scores[1].vote_key == "nope"


def test_plain_string_rewards_and_module_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURE.parent)
    task = get_task(f"prompts:{data(tmp_path)}", reward="grpo_reward:length_reward")
    val, _ = make_splits(task, 0, 2)
    task.check(val)
    assert task.style == "text"
    assert [s.reward for s in task.score_batch(val, ["x" * 10, "x" * 200])] == [pytest.approx(0.9), 0.0]
    assert task.sources["reward"]["sha256"] and task.sources["data"]["sha256"]


def test_a_reward_with_a_format_bonus_does_not_make_a_wrong_answer_correct(tmp_path):
    rows = [{"question": "2+2?", "answer": "#### 4"}, {"question": "3+3?", "answer": "#### 6"}]
    task = get_task(f"gsm8k:{data(tmp_path, rows, 'g.jsonl')}", reward=f"{FIXTURE}:format_reward")
    ex = task.example_from_row(rows[0])
    wrong = task.score_batch([ex], ["<answer>5</answer> #### 5"])[0]
    assert wrong.reward == 0.5 and not wrong.correct  # the user's reward, the task's verdict
    right = task.score_batch([ex], ["#### 4"])[0]
    assert right.reward == 0.0 and right.correct


@pytest.mark.parametrize(
    "fn, message",
    [
        ("broken_reward", "reward function .*broken_reward raised ValueError: the judge is down"),
        ("short_reward", "reward function .*short_reward returned 1 rewards for 2 completions"),
        ("text_reward", "reward function .*text_reward returned 'high' at position 0"),
        ("no_such_function", "has no function 'no_such_function'"),
    ],
)
def test_a_bad_reward_stops_the_run_before_the_store_is_touched(tmp_path, tiny_model_dir, fn, message):
    config = SearchConfig(
        model=str(tiny_model_dir),
        task=f"prompts:{data(tmp_path)}",
        reward=f"{FIXTURE}:{fn}",
        population=2,
        val_size=1,
        max_new_tokens=4,
    )
    run_dir = tmp_path / "run"
    with pytest.raises(ThicketsError, match=message):
        search(config, run_dir, progress=False)
    assert not run_dir.exists()


def test_a_prompts_task_needs_a_reward(tmp_path):
    with pytest.raises(ThicketsError, match="give --reward"):
        get_task(f"prompts:{data(tmp_path)}")
    with pytest.raises(ThicketsError, match=r"reward file .* does not exist"):
        get_task(f"prompts:{data(tmp_path)}", reward="nowhere.py:f")
    with pytest.raises(ThicketsError, match="module:function"):
        get_task(f"prompts:{data(tmp_path)}", reward="nofunction")


def test_a_search_with_a_user_reward_stores_its_rewards_and_refuses_a_changed_data_file(
    tmp_path, tiny_engine, tiny_model_dir
):
    p = data(tmp_path)
    config = SearchConfig(
        model=str(tiny_model_dir),
        task=f"prompts:{p}",
        reward=f"{FIXTURE}:length_reward",
        population=3,
        sigmas=(0.05,),
        val_size=4,
        max_new_tokens=6,
        batch_size=4,
    )
    run_dir = tmp_path / "run"
    result = search(config, run_dir, engine=tiny_engine, progress=False)
    assert len(result.ranked) == 3
    con = sqlite3.connect(run_dir / DB_NAME)
    try:
        stored = con.execute("SELECT completion, reward FROM results WHERE split='val'").fetchall()
    finally:
        con.close()
    assert len(stored) == 4 * 4
    for completion, reward in stored:
        assert reward == pytest.approx(max(0.0, 1.0 - len(completion) / 100))
    with sqlite3.connect(run_dir / DB_NAME) as con:
        sources = json.loads(con.execute("SELECT value FROM meta WHERE key='task_sources'").fetchone()[0])
    assert set(sources) == {"data", "reward"}

    data(tmp_path, ROWS[:7] + [{"prompt": "changed", "answer": "0"}])
    before = (run_dir / DB_NAME).read_bytes()
    with pytest.raises(ThicketsError, match=r"data .* has changed since run"):
        search(SearchConfig(**{**config.__dict__, "population": 4}), run_dir, engine=tiny_engine, progress=False)
    assert (run_dir / DB_NAME).read_bytes() == before


def test_thickets_score_with_a_reward(tmp_path, capsys):
    completion = tmp_path / "c.txt"
    completion.write_text("<answer>4</answer>")
    code = main(
        [
            "score",
            "--task",
            "prompts",
            "--reward",
            f"{FIXTURE}:correctness_reward",
            "--example",
            json.dumps({"prompt": "2+2?", "answer": "4"}),
            "--completion-file",
            str(completion),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["reward"] == 1.0 and out["correct"] and out["answer"] == "4"
    code = main(
        [
            "score",
            "--task",
            "prompts",
            "--reward",
            f"{FIXTURE}:broken_reward",
            "--example",
            json.dumps({"prompt": "2+2?"}),
            "--completion-file",
            str(completion),
        ]
    )
    assert code == 2 and "the judge is down" in capsys.readouterr().err
    assert score_one(get_task("gsm8k"), {"question": "q", "answer": "#### 3"}, "#### 3")["correct"]


HOSTILE = Path(__file__).parents[1] / "fixtures" / "hostile_rewards.py"
MBPP_ROWS = [
    {"task_id": i, "text": f"Write double{i}(x).", "test_list": [f"assert double{i}(2) == 4"]} for i in range(3)
]


def mbpp_task(tmp_path, fn, timeout=5.0):
    return get_task(f"mbpp:{data(tmp_path, MBPP_ROWS, 'mbpp.jsonl')}", reward=f"{HOSTILE}:{fn}", reward_timeout=timeout)


@pytest.mark.parametrize(
    "fn, message",
    [
        ("hangs", "did not return within 2 s"),
        ("exits", r"ended its process \(exit status 0\)"),
        ("raises_system_exit", "raised SystemExit"),
    ],
)
def test_a_reward_that_hangs_or_exits_fails_clearly(tmp_path, fn, message):
    task = mbpp_task(tmp_path, fn, timeout=2.0)
    val, _ = make_splits(task, 0, 2)
    with pytest.raises(ThicketsError, match=message):
        task.check(val)


def test_a_reward_that_exits_mid_run_ends_the_search_with_exit_2_and_keeps_the_store(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    argv = [
        "--quiet",
        "search",
        "--model",
        str(tiny_model_dir),
        "--task",
        f"mbpp:{data(tmp_path, MBPP_ROWS, 'm.jsonl')}",
        "--reward",
        f"{HOSTILE}:exits",
        "--population",
        "2",
        "--val-size",
        "2",
        "--max-new-tokens",
        "4",
        "--run-dir",
        str(run),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "ended its process" in err and len(err.splitlines()) == 1
    assert not run.exists()  # the probe call found it before anything was written


def test_a_reward_gets_copies_so_mutating_its_inputs_changes_no_verdict(tmp_path):
    task = mbpp_task(tmp_path, "empties_the_tests")
    val, _ = make_splits(task, 0, 3)
    task.check(val)
    wrong = [f"```python\ndef double{ex.data['row']['task_id']}(x):\n    return x\n```" for ex in val]
    scores = task.score_batch(val, wrong)
    assert not any(s.correct for s in scores)  # the asserts still ran
    assert all(ex.data["tests"] and ex.data["row"]["test_list"] for ex in val)


def test_what_a_reward_prints_is_not_taken_for_its_answer(tmp_path):
    task = get_task(f"prompts:{data(tmp_path)}", reward=f"{HOSTILE}:prints_and_scores")
    val, _ = make_splits(task, 0, 2)
    task.check(val)
    assert [s.reward for s in task.score_batch(val, ["a", "b"])] == [0.25, 0.25]
