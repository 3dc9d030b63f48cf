"""Third-party scorers called on model output: run only in the scorer sandbox, never in our process.

reasoning-gym's scorers for several tasks call eval() on the answer (string_insertion,
spiral_matrix, binary_matrix, n_queens, ...) and others hang on `9**9**9**9` (countdown,
puzzle24); math-verify hands some answers to sympy's parse_expr, which is eval() too. The
functions below are what a child of `sandbox.ScorerSandbox` runs: each call in a fresh fork,
with CPU and memory limits (the wall clock only a backstop). Their inputs from our side (datasets,
entries, gold answers) are trusted; the answer is not. They return plain JSON values.

A verdict is a function of the task, the example and the answer alone: the `*_warm` functions do in
the zygote, before any limit, all that a first call does once (imports, caches), so no child pays
for it inside its CPU limit, and math-verify's own wall-clock timeouts are off everywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from typing import Any

from thickets.tasks.code.sandbox import Outcome, scorer_sandbox

log = logging.getLogger(__name__)
_GYM: dict[tuple[str, str], Any] = {}


def _gym_dataset(dataset: str, config_json: str) -> Any:
    key = (dataset, config_json)
    if key not in _GYM:
        import reasoning_gym  # in the sandbox's zygote only

        _GYM[key] = reasoning_gym.create_dataset(dataset, size=1, seed=0, **json.loads(config_json))
    return _GYM[key]


def gym_warm(dataset: str, config_json: str) -> None:
    """In the zygote: import reasoning-gym, build the scorer and score a blank answer once (what a
    scorer imports or caches on its first call), for every child to inherit."""
    ds = _gym_dataset(dataset, config_json)
    with contextlib.suppress(Exception):  # a scorer that refuses a blank answer has still warmed up
        ds.score_answer("", ds[0])


def gym_score(dataset: str, config_json: str, answer: str, entry: dict[str, Any]) -> float:
    return float(_gym_dataset(dataset, config_json).score_answer(answer, entry))


def math_warm() -> None:
    """In the zygote: import math-verify and sympy and score one answer (math-verify's first parse
    imports more and builds its grammar and patterns), for every child to inherit."""
    for module in ("math_verify", "sympy"):
        importlib.import_module(module)
    math_score("\\frac{1}{2}", "0.5")


def math_score(gold: str, answer: str) -> dict[str, Any]:
    """math-verify's verdict on one boxed answer and a vote key that equivalent answers share."""
    from math_verify import parse, verify

    parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not parsed:
        return {"parsed": False, "key": None, "correct": False}
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    correct = bool(gold_parsed) and bool(verify(gold_parsed, parsed, timeout_seconds=None))
    return {"parsed": True, "key": math_key(parsed[0]), "correct": correct}


def math_gold_ok(gold: str) -> bool:
    from math_verify import parse

    return bool(parse("\\boxed{" + gold + "}", parsing_timeout=None))


def math_key(expr: Any) -> str:
    """One key for equivalent answers: `x = 1/2` votes with `1/2`, `0.5`, `50\\%` and `\\frac12`.

    An equation with a lone variable on the left is its right side; a number is its exact
    rational (or its simplified form: `2^{10}` -> 1024, `\\sqrt{2}/2` stays symbolic).
    """
    import sympy

    if isinstance(expr, sympy.Equality) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    if isinstance(expr, sympy.Basic) and expr.is_number:
        value = expr.doit()
        if isinstance(value, sympy.Float):
            value = sympy.nsimplify(value, rational=True)
        else:
            value = sympy.nsimplify(value)
        return str(value)
    return str(expr)


def sandboxed(target: str, calls: list[tuple[Any, ...]]) -> list[Outcome]:
    """Run `thickets.tasks.third_party:<target>` on each args tuple in the shared scorer sandbox."""
    outcomes = scorer_sandbox().call_many(f"{__name__}:{target}", calls)
    for out in outcomes:
        if out.unscored:
            log.warning("scorer %s failed twice on one answer (%s): recorded as unscored", target, out.error)
    return outcomes


def warm(target: str, *args: Any) -> None:
    scorer_sandbox().warm(f"{__name__}:{target}", args)
