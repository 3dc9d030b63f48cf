"""The base of every task read from rows: examples built once, served in an order shuffled by the seed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.files.data import column


class RowTask(Task):
    """Examples from rows, each once, in an order shuffled by the split seed."""

    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    kind = "rows"
    kind_description = ""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        name: str | None = None,
        columns: Mapping[str, str] | None = None,
        source: str | None = None,
    ):
        self.name = name or self.kind
        self.columns = dict(columns or {})
        self.source = source or self.name
        self._examples = [self._example(i, row) for i, row in enumerate(rows)]
        named = [e.id for e, row in zip(self._examples, rows) if "id" in row or "task_id" in row]
        if len(set(named)) != len(named):
            dup = next(i for i in named if named.count(i) > 1)
            raise ThicketsError(f"{self.source}: duplicate example id {dup!r}; give each row a distinct id")
        self.description = (
            f"{len(rows)} rows from {self.source}: {self.kind_description}" if rows else self.kind_description
        )

    def _example(self, i: int, row: Mapping[str, Any]) -> Example:
        where = f"{self.source} row {i + 1}"
        fields = self.fields(row, where)
        ident = row.get("id", row.get("task_id"))
        if ident is None:
            named = sorted((k, v) for k, v in fields.items() if not isinstance(v, bytes))  # bytes have a hash field
            ident = hashlib.sha256(repr(named).encode()).hexdigest()[:16]
        return Example(id=f"{self.name}:{ident}", prompt=self.prompt(fields), data={**fields, "row": row})

    def get(self, row: Mapping[str, Any], where: str, *names: str) -> Any:
        return column(row, names, self.columns, where)

    def example_from_row(self, row: Mapping[str, Any]) -> Example:
        """An example from one row as the user's file has it (used by `thickets score`)."""
        return self._example(0, row)

    def examples(self, seed: int) -> Iterator[Example]:
        if not self._examples:
            raise ThicketsError(f"task {self.name} reads its examples from a file: use --task {self.kind}:PATH")
        order = list(self._examples)
        random.Random(seed).shuffle(order)
        yield from order

    # what a kind defines
    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        raise NotImplementedError

    _PROMPT: str | None = None  # a kind may give a template over its fields instead of prompt()

    def prompt(self, fields: dict[str, Any]) -> str:
        if self._PROMPT is None:
            raise NotImplementedError
        return self._PROMPT.format(**fields)

    def score(self, example: Example, completion: str) -> Score:
        raise NotImplementedError
