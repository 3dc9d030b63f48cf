"""A verdict is a function of the task, the example and the completion alone: not of how busy the
machine is, of the wall clock, or of how the interpreter was reached (issue 25, finding 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import get_task
from thickets.tasks.code import sandbox
from thickets.tasks.code.sandbox import SandboxResult, ScorerSandbox, isolation
from thickets.tasks.files.mbpp import MBPPTask

pytestmark = pytest.mark.timeout(300)

MODES = ["namespace", "process"] if isolation() == "namespace" else ["process"]
MATH = [  # (reference, completion, correct)
    ("\\frac{1}{2}", "so \\boxed{0.5}", True),
    ("\\frac{1}{2}", "\\boxed{x = \\frac12}", True),
    ("\\frac{1}{2}", "\\boxed{2}", False),
    ("2^{10}", "\\boxed{1024}", True),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt{2}}{2}}", True),
    ("7", "\\boxed{9^{9^{9^{9}}}}", False),
]


def math_task(tmp_path: Path):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"problem": f"q{i}", "answer": g}) + "\n" for i, (g, _, _) in enumerate(MATH)))
    return get_task(f"math:{p}")


def math_verdicts(task) -> list[bool]:
    examples = [task.example_from_row({"problem": f"q{i}", "answer": g}) for i, (g, _, _) in enumerate(MATH)]
    return [s.correct for s in task.score_batch(examples, [c for _, c, _ in MATH])]


def test_a_reference_is_read_however_slow_the_parser(tmp_path, monkeypatch):
    """math-verify's own timeout is a wall clock: a parser slowed by a busy machine refused '\\frac{1}{2}'."""
    import math_verify.parser

    real = math_verify.parser.extract_target_from_pred

    def slow(*args, **kwargs):
        time.sleep(1.5)  # what a descheduled process sees: the clock runs, the parse does not
        return real(*args, **kwargs)

    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", slow)
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"problem": "q", "answer": "\\frac{1}{2}"}) + "\n")
    task = get_task(f"math:{p}")
    assert task.example_from_row({"problem": "q", "answer": "\\frac{1}{2}"}).data["answer"] == "\\frac{1}{2}"


@pytest.mark.parametrize("mode", MODES)
def test_a_scorer_call_is_limited_by_cpu_time_not_the_clock(mode):
    """A call that needs little CPU but much wall time (a starved process) is answered; a loop still is not."""
    box = ScorerSandbox(cpu_s=1, mode=mode)
    try:
        slept, looped = box.call_many("builtins:exec", [("import time; time.sleep(2.5)",), ("while True: pass",)])
    finally:
        box.close()
    assert slept.ok, slept.error
    assert looped.error == "timeout"


@pytest.mark.parametrize("mode", MODES)
def test_a_scorer_killed_from_outside_is_run_once_more(mode):
    """A child killed without using up its CPU time (the OOM killer, say) is no verdict on the answer."""
    once = "import os, signal\nif not os.path.exists('crashed'):\n    open('crashed', 'w').close()\n    os.abort()"
    kill = "import signal; signal.raise_signal(signal.SIGKILL)"
    box = ScorerSandbox(cpu_s=2, mode=mode)
    try:
        retried, always = box.call_many("builtins:exec", [(once,), (kill,)])
    finally:
        box.close()
    assert retried.ok, retried.error
    assert always.error.startswith("crashed")


def test_math_children_start_warm():
    """Everything a first math-verify call imports is imported in the zygote, before any limit."""
    code = textwrap.dedent(
        """
        import sys
        from thickets.tasks import third_party
        third_party.math_warm()
        before = set(sys.modules)
        third_party.math_score("\\\\frac{1}{3}", "x = 2/6")
        print(sorted(set(sys.modules) - before))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_math_verdicts_are_the_same_on_a_busy_machine(tmp_path):
    task = math_task(tmp_path)
    quiet = math_verdicts(task)
    assert quiet == [c for _, _, c in MATH]
    sandbox.scorer_sandbox().close()  # so that its start and warm-up run on the busy machine too
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        assert math_verdicts(task) == quiet
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def test_a_scorer_sandbox_that_cannot_start_is_one_error(tmp_path, monkeypatch):
    """No site-packages in the jail (as with a linked environment before): an error, never 'wrong'."""
    task = math_task(tmp_path)
    monkeypatch.setattr(sandbox, "_import_roots", lambda: [sandbox.import_root()])
    monkeypatch.setattr(sandbox, "_SHARED", None)
    try:
        with pytest.raises(ThicketsError, match="scorer sandbox") as e:
            math_verdicts(task)
        assert "\n" not in str(e.value)
    finally:
        sandbox.scorer_sandbox().close()


_SCRIPT = """
import json, sys
from thickets.tasks import get_task
task = get_task("math:" + sys.argv[1])
examples = [task.example_from_row(r) for r in map(json.loads, open(sys.argv[1]))]
print(json.dumps([s.correct for s in task.score_batch(examples, json.loads(sys.argv[2]))]))
"""


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs a virtual environment to link to")
def test_a_linked_environment_scores_as_the_real_one(tmp_path):
    """A Python reached through a `.venv` that is a link, from a script beside the link or elsewhere."""
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"problem": f"q{i}", "answer": g}) + "\n" for i, (g, _, _) in enumerate(MATH)))
    completions = json.dumps([c for _, c, _ in MATH])
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    python = tmp_path / "project" / ".venv" / "bin" / "python"
    for folder in (tmp_path / "project", tmp_path / "elsewhere"):
        folder.mkdir(exist_ok=True)
        (folder / "score.py").write_text(_SCRIPT)
        run = subprocess.run(
            [str(python), str(folder / "score.py"), str(data), completions], capture_output=True, text=True, cwd=folder
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout) == [c for _, _, c in MATH], folder.name


def test_program_verdicts_count_cpu_time_not_the_clock():
    """A program that waits (as on a busy machine) but needs little CPU passes; an endless loop does not."""
    rows = [{"task_id": 1, "text": "Write one().", "test_list": ["assert one() == 1"]}]
    task = MBPPTask(rows, timeout_s=1.0)
    (ex,) = list(task.examples(0))
    waits = "import time\ntime.sleep(2.5)\ndef one():\n    return 1"
    assert task.score(ex, f"```python\n{waits}\n```").correct
    assert not task.score(ex, "```python\nwhile True:\n    pass\n```").correct


def test_a_code_sandbox_that_cannot_run_is_an_error_not_a_verdict(monkeypatch):
    from thickets.tasks.code import tasks

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        return SandboxResult(False, "error", 125, "", "thickets sandbox setup failed: OSError(12, 'no memory')")

    monkeypatch.setattr(tasks, "run_python", broken)
    rows = [{"task_id": 1, "text": "Write one().", "test_list": ["assert one() == 1"]}]
    task = MBPPTask(rows)
    (ex,) = list(task.examples(0))
    with pytest.raises(ThicketsError, match=r"code sandbox cannot run programs: .*no memory"):
        task.score(ex, "```python\ndef one():\n    return 1\n```")
    assert len(calls) == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_stalled_scorer_is_run_once_more_then_unscored(mode):
    """A call past the wall backstop with its CPU time to spare (blocked, or starved by a busy machine) is
    no verdict on the answer: it runs once more, and failing again it is unscored, never a timeout."""
    once = "import os, time\nif not os.path.exists('stalled'):\n    open('stalled', 'w').close()\n    time.sleep(30)"
    box = ScorerSandbox(cpu_s=2, mode=mode)
    box.wall_s = 1.0  # the backstop of a machine too busy to give a call any time
    try:
        retried, always = box.call_many("builtins:exec", [(once,), ("import time; time.sleep(30)",)])
    finally:
        box.close()
    assert retried.ok, retried.error
    assert always.error.startswith("stalled") and always.unscored


def test_a_scorer_that_fails_twice_leaves_the_answer_unscored(tmp_path, monkeypatch):
    """Unscored, not wrong: the row says so, and a summary of the model leaves it out of every mean."""
    from thickets.randopt.store import Summary
    from thickets.tasks import third_party
    from thickets.tasks.code.sandbox import Outcome
    from thickets.tasks.files import kinds

    task = math_task(tmp_path)
    examples = [task.example_from_row({"problem": f"q{i}", "answer": g}) for i, (g, _, _) in enumerate(MATH)]
    completions = [c for _, c, _ in MATH]
    real = third_party.sandboxed

    def first_crashes(target, calls):
        out = real(target, calls)
        return [Outcome(False, error="crashed (exit status 9)")] + out[1:] if target == "math_score" else out

    monkeypatch.setattr(kinds, "sandboxed", first_crashes)
    scores = task.score_batch(examples, completions)
    assert scores[0].unscored and not scores[0].correct
    assert [s.unscored for s in scores[1:]] == [False] * (len(MATH) - 1)
    assert [s.correct for s in scores[1:]] == [c for _, _, c in MATH[1:]]
    summary = Summary.of(scores)
    assert summary.unscored == 1 and summary.n == len(MATH)
    assert summary.accuracy == pytest.approx(sum(c for _, _, c in MATH[1:]) / (len(MATH) - 1))
