"""Bring your own reward: a function written for TRL's GRPOTrainer works here unchanged.

TRL calls `f(completions, prompts=..., **columns) -> list[float]`, each column a list over the
batch, and completions either strings or chat messages ([{"role": "assistant", "content": ...}]).
We call it the same way. Which completion style a function wants is found once, by trying
strings first and then chat messages on a probe batch, before any candidate is scored.
A `None` reward (TRL's "does not apply") counts as 0. The task around it still extracts the
answer and decides correctness, so a reward with a format bonus never inflates accuracy.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ThicketsError
from .base import Example, Score, Task

#: a reward at or above this counts as correct on a prompts-only task (no verifier of its own)
SUCCESS_REWARD = 1.0
STYLES = ("text", "chat")


def load_reward(spec: str) -> tuple[Callable, str, str]:
    """(function, its name, sha256 of its source file) from `module:function` or `path/to/file.py:function`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ThicketsError(f"--reward must be module:function or file.py:function, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ThicketsError(f"reward file {target} does not exist")
        name = f"thickets_reward_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ThicketsError(f"cannot import reward file {target}: {type(e).__name__}: {e}") from None
    else:
        sys.path.insert(0, str(Path.cwd()))  # a console script does not put the working folder on the path
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ThicketsError(f"cannot import reward module {target}: {type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(Path.cwd()))
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ThicketsError(f"reward {spec}: {target} has no function {attr!r}")
    source = getattr(module, "__file__", None)
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else ""
    return fn, spec, digest


def _columns(examples: Sequence[Example]) -> dict[str, list]:
    """Each example's original row (or its data) as TRL passes dataset columns: one list per column."""
    rows = [ex.data.get("row", ex.data) for ex in examples]
    keys = [k for k in rows[0] if all(k in r for r in rows)] if rows else []
    return {k: [r[k] for r in rows] for k in keys if k not in ("prompts", "completions")}


class RewardTask:
    """Any task, with its reward replaced by a user's function; extraction and correctness stay the task's."""

    reward_range = None  # unknown: a user's function may return any number

    def __init__(self, inner: Task, fn: Callable, name: str, digest: str, style: str | None = None):
        self.inner, self.fn, self.reward_name, self.style = inner, fn, name, style
        self.name = inner.name
        self.description = f"{inner.description}; reward from {name}"
        self.stop, self.system_prompt = inner.stop, inner.system_prompt
        self.sources = {**getattr(inner, "sources", {}), "reward": {"function": name, "sha256": digest}}
        self._judges = not hasattr(inner, "kind") or inner.kind != "prompts"

    def examples(self, seed: int):
        return self.inner.examples(seed)

    def example_from_row(self, row: dict) -> Example:
        from . import example_from_dict

        return example_from_dict(self.inner, row)

    def _call(self, examples: Sequence[Example], completions: Sequence[str], style: str) -> list[float]:
        if style == "chat":
            comps: list[Any] = [[{"role": "assistant", "content": c}] for c in completions]
            prompts: list[Any] = [[{"role": "user", "content": ex.prompt}] for ex in examples]
        else:
            comps, prompts = list(completions), [ex.prompt for ex in examples]
        out = self.fn(completions=comps, prompts=prompts, **_columns(examples))
        return self._validate(out, len(completions))

    def _validate(self, out: Any, n: int) -> list[float]:
        who = f"reward function {self.reward_name}"
        try:
            values = list(out)
        except TypeError:
            raise ThicketsError(f"{who} returned {type(out).__name__}, not a list of numbers") from None
        if len(values) != n:
            raise ThicketsError(f"{who} returned {len(values)} rewards for {n} completions")
        rewards = []
        for i, v in enumerate(values):
            if v is None:
                v = 0.0
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise ThicketsError(f"{who} returned {v!r} at position {i}; rewards must be finite numbers or None")
            rewards.append(float(v))
        return rewards

    def check(self, examples: Sequence[Example]) -> None:
        """Call the function once on a probe batch, before anything is scored; fixes the completion style."""
        probe = list(examples[:4]) if len(examples) >= 2 else list(examples) * 2
        completions = ["", "<answer>0</answer>"] * (len(probe) // 2) + [""] * (len(probe) % 2)
        errors = []
        for style in ([self.style] if self.style else STYLES):
            try:
                self._call(probe, completions, style)
            except ThicketsError:
                raise
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            self.style = style
            return
        raise ThicketsError(f"reward function {self.reward_name} raised {errors[0]}")

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        if self.style is None:
            self.check(examples)
        try:
            rewards = self._call(examples, completions, self.style)
        except ThicketsError:
            raise
        except Exception as e:
            raise ThicketsError(f"reward function {self.reward_name} raised {type(e).__name__}: {e}") from None
        scores = []
        for ex, c, r in zip(examples, completions, rewards):
            s = self.inner.score(ex, c)
            correct = s.correct if self._judges else (s.extracted and r >= SUCCESS_REWARD)
            scores.append(Score(s.answer, s.vote_key, r, correct))
        return scores

    def score(self, example: Example, completion: str) -> Score:
        return self.score_batch([example], [completion])[0]
