"""Third-party scorers never see model output in our process: reasoning-gym's and math-verify's run in
the scorer sandbox, one fork per answer, with a time bound."""

from __future__ import annotations

import json
import os

import pytest

from thickets.tasks import get_task
from thickets.tasks.code.sandbox import isolation
from thickets.tasks.gym import GymTask
from thickets.tasks.splits import make_splits

pytestmark = pytest.mark.timeout(180)  # a hang guard: a hanging scorer must be cut off

#: every reasoning-gym 0.1.25 scorer that runs the answer as code: eval() in string_insertion,
#: spiral_matrix, binary_matrix and n_queens; sympy's parse_expr or sympify (an eval) in the others.
#: Found by probing all 106 datasets' scorers with answers that write a file if executed.
EVAL_SCORERS = [
    "binary_matrix",
    "countdown",
    "intermediate_integration",
    "n_queens",
    "polynomial_multiplication",
    "puzzle24",
    "simple_integration",
    "spiral_matrix",
    "string_insertion",
]


def payload(marker) -> str:
    return f"__import__('os').system('touch {marker}')"


@pytest.mark.parametrize("dataset", EVAL_SCORERS)
def test_a_gym_scorer_that_evals_the_answer_runs_nothing_on_the_host(dataset, tmp_path):
    task = GymTask(dataset)
    (ex,), _ = make_splits(task, 0, 1)
    marker = tmp_path / "pwned"
    for answer in (payload(marker), f"[{payload(marker)}]", f"{payload(marker)} or 1"):
        s = task.score(ex, f"<answer>{answer}</answer>")
        assert s.reward <= 0.05 and not s.correct
    assert not marker.exists()


@pytest.mark.parametrize("dataset", ["countdown", "puzzle24"])
def test_a_gym_scorer_that_hangs_on_a_power_bomb_is_cut_off(dataset):
    task = GymTask(dataset)
    (ex,), _ = make_splits(task, 0, 1)
    scores = task.score_batch([ex, ex], ["<answer>9**9**9**9</answer>", "<answer>(9**9)**(9**9)</answer>"])
    assert all(s.reward <= 0.05 and not s.correct for s in scores)


def test_gym_verdicts_are_reasoning_gyms_own():
    task = GymTask("letter_counting")
    val, _ = make_splits(task, 0, 3)
    gold = [ex.data["entry"]["answer"] for ex in val]
    right = task.score_batch(val, [f"<answer>{g}</answer>" for g in gold])
    assert all(s.correct and s.reward == 1.0 for s in right)
    wrong = task.score_batch(val, ["<answer>banana</answer>"] * 3)
    assert not any(s.correct for s in wrong)


def test_math_verify_sees_model_output_only_in_the_sandbox(tmp_path):
    p = tmp_path / "m.jsonl"
    row = {"problem": "q", "answer": "7"}
    p.write_text(json.dumps(row) + "\n")
    task = get_task(f"math:{p}")
    ex = task.example_from_row(row)
    marker = tmp_path / "pwned"
    for answer in (payload(marker), f"x={payload(marker)}"):
        assert not task.score(ex, f"\\boxed{{{answer}}}").correct
    assert not marker.exists()
    assert task.score(ex, "\\boxed{7}").correct


MODES = ["namespace", "process"] if isolation() == "namespace" else ["process"]


@pytest.fixture(params=MODES)
def sandbox(request):
    from thickets.tasks.code.sandbox import ScorerSandbox

    box = ScorerSandbox(cpu_s=2, mode=request.param)
    yield box
    box.close()


def test_each_call_is_bounded_and_reports_how_it_failed(sandbox):
    out = sandbox.call_many("builtins:eval", [("9**9**9**9",), ("[0] * 10**10",), ("1/0",), ("6 * 7",)])
    assert [o.ok for o in out] == [False, False, False, True]
    assert out[0].error == "timeout" and out[1].error == "memory" and "ZeroDivisionError" in out[2].error
    assert out[3].value == 42


def test_one_answer_cannot_change_the_verdict_on_the_next(sandbox):
    """Each call is a fresh fork: patching the scorer from inside one answer reaches no later answer."""
    out = sandbox.call_many(
        "builtins:eval",
        [("__import__('math').__setattr__('sqrt', lambda x: 99) or 0",), ("__import__('math').sqrt(4)",)],
    )
    assert out[1].value == 2.0


def test_output_and_fork_attempts_do_not_reach_the_caller(sandbox, capfd):
    out = sandbox.call_many(
        "builtins:exec", [("print('x' * 1000); import os; os.write(1, b'{\"ok\": true}')",), ("import os; os.fork()",)]
    )
    assert out[0].ok and out[0].value is None  # what it printed went nowhere; the reply is the call's own
    assert not out[1].ok
    assert "x" * 1000 not in capfd.readouterr().out


def test_the_zygote_is_restarted_after_it_dies(sandbox):
    assert sandbox.call_many("math:sqrt", [(9,)])[0].value == 3.0
    os.kill(sandbox._proc.pid, 9)
    sandbox._proc.wait()
    assert sandbox.call_many("math:sqrt", [(16,)])[0].value == 4.0


def test_thickets_score_on_a_gym_task_runs_nothing_from_the_answer(tmp_path, capsys):
    from thickets.cli.commands import main

    marker = tmp_path / "F"
    completion = tmp_path / "c.txt"
    completion.write_text(f"<answer>__import__('os').system('id > {marker}')</answer>")
    example = json.dumps({"question": "Insert", "answer": "abc", "metadata": {}})
    assert (
        main(["score", "--task", "gym:string_insertion", "--example", example, "--completion-file", str(completion)])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == 0.0 and not out["correct"] and not marker.exists()
