"""MBPP-style rows from a data file: a description and assert statements, run in the sandbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score
from thickets.tasks.code.tasks import extract_program, score_program
from thickets.tasks.files.rows import RowTask


class MBPPTask(RowTask):
    """MBPP-style rows: a description and assert statements; 1.0 only if every assert passes.

    A row needs `prompt` (or MBPP's `text`) and `tests` (or MBPP's `test_list`), a list of
    assert lines; optional `setup` (or `test_setup_code`) runs before the answer, and
    `task_id` (else a hash of the prompt) names the example.
    """

    kind = "mbpp"
    kind_description = "code run against the row's asserts in a sandbox; 1 if all pass"

    def __init__(
        self,
        rows: list[dict[str, Any]],
        name: str = "mbpp",
        columns: Mapping[str, str] | None = None,
        source: str | None = None,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
    ):
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        super().__init__(rows, name, columns, source)

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        text, tests = self.get(row, where, "prompt", "text"), self.get(row, where, "tests", "test_list")
        if (
            not isinstance(text, str)
            or not isinstance(tests, list)
            or not tests
            or not all(isinstance(t, str) for t in tests)
        ):
            raise ThicketsError(f"{where}: a row needs a string prompt and a non-empty list of test strings")
        setup = row.get(self.columns.get("setup", "setup"), row.get("test_setup_code", "")) or ""
        return {"text": text, "tests": tests, "setup": setup}

    def prompt(self, fields: dict[str, Any]) -> str:
        return (
            f"{fields['text']}\nYour code should pass these tests:\n\n"
            + "\n".join(fields["tests"])
            + "\n\nReply with the Python code in a ```python code block."
        )

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The answer's code and its normalised key (nothing is run)."""
        return extract_program(completion)

    def score(self, example: Example, completion: str) -> Score:
        extracted = extract_program(completion)
        program = f"{example.data['setup']}\n\n{extracted[0]}\n\n" + "\n".join(example.data["tests"]) + "\n"
        return score_program(extracted, program, self.timeout_s, self.memory_mb)
