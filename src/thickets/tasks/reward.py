"""Bring your own reward: a function written for TRL's GRPOTrainer works here unchanged.

TRL calls `f(completions, prompts=..., **columns) -> list[float]`, each column a list over the
batch, and completions either strings or chat messages ([{"role": "assistant", "content": ...}]).
We call it the same way. Which completion style a function wants is found once, by trying
strings first and then chat messages on a probe batch, before any candidate is scored.
A `None` reward (TRL's "does not apply") counts as 0. The task around it still extracts the
answer and decides correctness, so a reward with a format bonus never inflates accuracy.

The function is untrusted code and runs in a process of its own (`reward_worker`): it gets
copies of its inputs (mutating them changes nothing here), each batch has a time bound, and a
hang, an exit (`os._exit`, SystemExit) or a wrong return stops the run with one line naming the
function, before that batch's scores are stored. Nothing it does can end a run as a success.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from thickets.disk import sha256_of
from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.code.pipes import end, import_root, read_line, send

#: a reward at or above this counts as correct on a prompts-only task (no verifier of its own)
SUCCESS_REWARD = 1.0
STYLES = ("text", "chat")


class RewardProcess:
    """The worker process a reward function runs in: started on first use, restarted after a failure."""

    def __init__(self, spec: str, timeout_s: float):
        self.spec, self.timeout_s = spec, timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.source: str | None = None

    def _start(self) -> None:
        root = import_root()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "thickets.tasks.reward_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
            env=env,
            start_new_session=True,
        )
        reply = self._ask(("load", self.spec), "importing it")
        if not reply.get("ok"):
            self.close()
            raise ThicketsError(f"cannot load reward {self.spec}: {reply.get('error', '')}")
        self.source = reply.get("source")

    def _ask(self, message: tuple[str, Any], doing: str) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None  # started, with both pipes
        send(proc.stdin, message)  # if it is gone, the read below says how
        line = read_line(proc.stdout, self.timeout_s)
        if line is None:
            self.close()
            raise ThicketsError(
                f"reward function {self.spec} did not return within {self.timeout_s:g} s while "
                f"{doing}; fix it or raise --reward-timeout"
            )
        if not line:
            status: int | str
            try:
                status = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                status = "unknown"
            self.close()
            raise ThicketsError(
                f"reward function {self.spec} ended its process (exit status {status}) while "
                f"{doing}; a reward function must return its rewards"
            )
        try:
            reply: dict[str, Any] = json.loads(line)
            return reply
        except ValueError:
            self.close()
            raise ThicketsError(f"reward function {self.spec}: its process answered garbage") from None

    def call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = None
            self._start()
        return self._ask(("call", kwargs), "scoring")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            end(proc)

    def __del__(self) -> None:
        self.close()


def load_reward(spec: str, timeout_s: float = 300.0) -> tuple[RewardProcess, str, str]:
    """(its process, its name, sha256 of its source file) from `module:function` or `path/to/file.py:function`.
    The module is imported in the worker, never here."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ThicketsError(f"--reward must be module:function or file.py:function, got {spec!r}")
    if target.endswith(".py") and not Path(target).is_file():
        raise ThicketsError(f"reward file {target} does not exist")
    proc = RewardProcess(str(Path(target).resolve()) + ":" + attr if target.endswith(".py") else spec, timeout_s)
    proc._start()
    digest = sha256_of([Path(proc.source)]) if proc.source else ""
    return proc, spec, digest


def _columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Each example's original row (or its data) as TRL passes dataset columns: one list per column."""
    rows = [ex.data.get("row", ex.data) for ex in examples]
    keys = [k for k in rows[0] if all(k in r for r in rows)] if rows else []
    return {k: [r[k] for r in rows] for k in keys if k not in ("prompts", "completions")}


class _Raised(Exception):
    """The function raised (its message says what); a failure of the function, not of thickets."""


class RewardTask(Task):
    """Any task, with its reward replaced by a user's function; extraction and correctness stay the task's."""

    reward_range = None  # unknown: a user's function may return any number

    def __init__(self, inner: Task, fn: RewardProcess, name: str, digest: str, style: str | None = None):
        self.inner, self.fn, self.reward_name, self.style = inner, fn, name, style
        self.name = inner.name
        self.description = f"{inner.description}; reward from {name}"
        self.stop, self.system_prompt = inner.stop, inner.system_prompt
        self.sources = {**inner.sources, "reward": {"function": name, "sha256": digest}}
        self.packages = inner.packages
        self.needs_reward = inner.needs_reward  # still no answers of its own: distillation filters by the vote
        self._judges = not inner.needs_reward  # a prompts-only task: correct means the reward reaches 1

    def examples(self, seed: int) -> Iterator[Example]:
        return self.inner.examples(seed)

    def example_from_row(self, row: Mapping[str, Any]) -> Example:
        return self.inner.example_from_row(row)

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The inner task's: a reward function changes the reward, never the answer or its key."""
        return self.inner.extract(completion)

    def _call(self, examples: Sequence[Example], completions: Sequence[str], style: str) -> list[float]:
        if style == "chat":
            comps: list[Any] = [[{"role": "assistant", "content": c}] for c in completions]
            prompts: list[Any] = [[{"role": "user", "content": ex.prompt}] for ex in examples]
        else:
            comps, prompts = list(completions), [ex.prompt for ex in examples]
        reply = self.fn.call(dict(completions=comps, prompts=prompts, **_columns(examples)))
        if not reply.get("ok"):
            raise _Raised(reply.get("error", "failed"))
        return self._validate(reply["rewards"], len(completions))

    def _validate(self, values: list[Any], n: int) -> list[float]:
        who = f"reward function {self.reward_name}"
        if len(values) != n:
            raise ThicketsError(f"{who} returned {len(values)} rewards for {n} completions")
        rewards: list[float] = []
        for i, v in enumerate(values):
            if not (v is None or isinstance(v, float)):
                shown = v[0] if isinstance(v, list) else repr(v)  # the worker sends what is not a number as its repr
                raise ThicketsError(f"{who} returned {shown} at position {i}; rewards must be finite numbers or None")
            rewards.append(0.0 if v is None else v)
        return rewards

    def check(self, examples: Sequence[Example]) -> None:
        """Call the function once on a probe batch, before anything is scored; fixes the completion style."""
        probe = list(examples[:4]) if len(examples) >= 2 else list(examples) * 2
        completions = ["", "<answer>0</answer>"] * (len(probe) // 2) + [""] * (len(probe) % 2)
        errors = []
        for style in [self.style] if self.style else STYLES:
            try:
                self._call(probe, completions, style)
            except _Raised as e:
                errors.append(str(e))
                continue
            self.style = style
            return
        raise ThicketsError(f"reward function {self.reward_name} {errors[0]}")

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        if self.style is None:
            self.check(examples)
        assert self.style is not None  # check() set it, or raised
        try:
            rewards = self._call(examples, completions, self.style)
        except _Raised as e:
            raise ThicketsError(f"reward function {self.reward_name} {e}") from None
        scores = []
        for s, r in zip(self.inner.score_batch(examples, completions), rewards):
            correct = s.correct if self._judges else (s.extracted and r >= SUCCESS_REWARD)
            scores.append(Score(s.answer, s.vote_key, r, correct))
        return scores

    def score(self, example: Example, completion: str) -> Score:
        return self.score_batch([example], [completion])[0]
