"""The process a user's reward function runs in (`python -m thickets.tasks.reward_worker`).

A reward function is untrusted code: it may hang, call `os._exit(0)`, raise SystemExit or mutate
what it is given. Here it can do all of that without touching the run: the parent (`reward_fn`)
sends each batch pickled (so the function gets copies), waits with a time bound, and treats an
exit or a hang as a failure of the function. Replies go back as JSON on a descriptor of their
own; what the function prints goes to stderr.

Requests: 4-byte length + pickle of ("load", spec) or ("call", kwargs). Replies: one JSON line,
{"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from thickets.tasks.code.pipes import receive


def _load(spec: str) -> tuple[Callable[..., Any], str | None]:
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        name = f"thickets_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None  # a .py path has a source loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())  # a console script does not put the working folder on the path
        module = importlib.import_module(target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise LookupError(f"{target} has no function {attr!r}")
    return fn, getattr(module, "__file__", None)


def _jsonable(values: Iterable[object]) -> list[float | list[str] | None]:
    """The rewards as JSON: numbers as floats, None as None, anything else (a bool, a string, NaN) as its
    repr in a one-item list, so the parent can name what the function returned."""
    out: list[float | list[str] | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
            out.append(float(v))
        else:
            out.append([repr(v)[:60]])
    return out


def main() -> None:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # the function's prints go to stderr, never into the replies

    def reply(obj: object) -> None:
        data = (json.dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(reply_fd, view) :]

    fn: Any = None  # the user's function once loaded (called before that, the TypeError is its reply)
    while True:
        message = receive(0)
        if message is None:
            return
        op, payload = message
        try:
            if op == "load":
                fn, source = _load(payload)
                reply({"ok": True, "source": source})
            else:
                out = fn(**payload)
                try:
                    values = list(out)
                except TypeError:
                    reply({"ok": False, "error": f"returned {type(out).__name__}, not a list of numbers"})
                    continue
                reply({"ok": True, "rewards": _jsonable(values)})
        except BaseException as e:
            reply({"ok": False, "error": f"raised {type(e).__name__}: {e}"[:500]})


if __name__ == "__main__":
    main()
