"""Tasks over a user's data file, one class per kind the paper evaluates.

`gsm8k:FILE` (final number), `math:FILE` (\\boxed{} through math-verify: MATH-500,
OlympiadBench), `mc:FILE` (multiple choice), `ordering:FILE` (ROCStories-style sentence
order), `mbpp:FILE` (code with asserts, in the sandbox) and `prompts:FILE` (prompts only,
scored by the user's `--reward`). Each row keeps its original columns in `data["row"]`,
which is what a user's reward function receives.
"""

from __future__ import annotations

import functools
import hashlib
import random
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

from ..errors import ThicketsError
from .answers import (LETTERS, extract_choice, extract_final_number, extract_order, last_boxed, latex_equal,
                      latex_key, number_key, parse_latex, parse_number)
from .base import Score
from .code import MBPPTask
from .data import fingerprint, load_rows
from .extract import MAX_ANSWER_CHARS, last_tag, normalise
from .rows import RowTask


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ThicketsError(f"{where}: {what} must be non-empty text, got {value!r:.60}")
    return value


class NumberTask(RowTask):
    kind = "gsm8k"
    kind_description = "final number after ####, numeric equivalence"
    _PROMPT = ("{question}\n\nSolve the problem step by step. Then give the final answer as a number "
               "after '####', like this: #### 42")

    def fields(self, row, where):
        question = _text(self.get(row, where, "question", "problem", "prompt", "input"), "the question", where)
        answer = self.get(row, where, "answer", "target", "output", "solution")
        text = str(answer)
        gold = parse_number(text) if "####" not in text else None
        if gold is None and (extracted := extract_final_number(text)) is not None:
            gold = parse_number(extracted)
        if gold is None:
            raise ThicketsError(f"{where}: cannot read a number from the answer {text[-60:]!r}")
        return {"question": question, "answer": number_key(gold)}

    def score(self, example, completion):
        answer = extract_final_number(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        value = parse_number(answer)
        if value is None:
            return Score(answer, None, 0.0, False)
        correct = value == Fraction(example.data["answer"])
        return Score(answer, number_key(value), float(correct), correct)


@functools.lru_cache(maxsize=4096)
def _parsed_gold(answer: str):
    return parse_latex(answer)


class MathTask(RowTask):
    kind = "math"
    kind_description = "\\boxed{} answer, equivalence by math-verify"
    _PROMPT = "{question}\n\nReason step by step, and put your final answer within \\boxed{{}}."

    def fields(self, row, where):
        question = _text(self.get(row, where, "question", "problem", "prompt", "input"), "the problem", where)
        answer = self.get(row, where, "answer", "final_answer", "solution")
        if isinstance(answer, list) and answer:  # OlympiadBench keeps final_answer as a list
            answer = answer[0]
        answer = str(answer)
        gold = last_boxed(answer) or answer.strip().strip("$").strip()
        if _parsed_gold(gold) is None:
            raise ThicketsError(f"{where}: math-verify cannot read the reference answer {gold[:60]!r}")
        return {"question": question, "answer": gold}

    def score(self, example, completion):
        answer = last_boxed(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        parsed = parse_latex(answer)
        if parsed is None:
            return Score(answer, None, 0.0, False)
        correct = latex_equal(_parsed_gold(example.data["answer"]), parsed)
        return Score(answer, latex_key(parsed), float(correct), correct)


class ChoiceTask(RowTask):
    kind = "mc"
    kind_description = "multiple choice, letter extracted from 'The answer is (B)' and the like"

    def fields(self, row, where):
        question = _text(self.get(row, where, "question", "prompt", "input"), "the question", where)
        if "choices" in self.columns or any(n in row for n in ("choices", "options")):
            choices = self.get(row, where, "choices", "options")
            if isinstance(choices, dict) and "text" in choices:  # the layout of ARC and others on the hub
                choices = choices["text"]
        else:
            choices = [row[c] for c in LETTERS if c in row]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise ThicketsError(f"{where}: choices must be a list of 2 to 26 options (or columns A, B, C, ...)")
        answer = self.get(row, where, "answer", "label", "target")
        n = len(choices)
        if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
            index = int(answer)  # an index into the choices, counted from 0
        elif isinstance(answer, str) and answer.strip().strip("()").upper() in LETTERS[:n] and len(answer.strip().strip("()")) == 1:
            index = LETTERS.index(answer.strip().strip("()").upper())
        elif answer in choices:
            index = choices.index(answer)
        else:
            raise ThicketsError(f"{where}: the answer {answer!r} is not a letter, an index or one of the choices")
        if not 0 <= index < n:
            raise ThicketsError(f"{where}: the answer index {index} is outside the {n} choices")
        return {"question": question, "choices": [str(c) for c in choices], "answer": LETTERS[index]}

    def prompt(self, fields):
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(fields["choices"]))
        return (f"{fields['question']}\n\n{options}\n\nAnswer with the letter of the correct choice, "
                f"like this: The answer is (A).")

    def score(self, example, completion):
        letter = extract_choice(completion, len(example.data["choices"]))
        if letter is None:
            return Score(None, None, 0.0, False)
        correct = letter == example.data["answer"]
        return Score(letter, letter, float(correct), correct)


class OrderingTask(RowTask):
    """Sentences given shuffled; reward is the share of positions right, correct only for the exact order."""

    kind = "ordering"
    kind_description = "put shuffled sentences in order; reward = share of positions right, correct = exact"

    def fields(self, row, where):
        if "sentences" in self.columns or "sentences" in row:
            sentences = self.get(row, where, "sentences")
        else:  # ROCStories' own columns
            sentences = [row[f"sentence{i}"] for i in range(1, 10) if f"sentence{i}" in row]
            if not sentences:
                self.get(row, where, "sentences")  # raises, naming the columns there are
        if not isinstance(sentences, list) or len(sentences) < 2 or not all(isinstance(s, str) for s in sentences):
            raise ThicketsError(f"{where}: sentences must be a list of at least 2 strings, in the right order")
        rng = random.Random(hashlib.sha256("\n".join(sentences).encode()).hexdigest())
        shown = list(range(len(sentences)))
        while shown == sorted(shown):
            rng.shuffle(shown)
        # gold: the shown numbers (1-based) read in story order
        gold = [shown.index(k) + 1 for k in range(len(sentences))]
        return {"shown": [sentences[k] for k in shown], "answer": gold}

    def prompt(self, fields):
        listing = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(fields["shown"]))
        n = len(fields["shown"])
        example = " ".join(map(str, [2, 1] + list(range(3, n + 1))))
        return (f"Put these sentences in the order that tells a coherent story:\n{listing}\n\n"
                f"Answer with the sentence numbers in story order inside <answer></answer> tags, "
                f"like this: <answer>{example}</answer>")

    def score(self, example, completion):
        gold = tuple(example.data["answer"])
        order = extract_order(completion, len(gold))
        if order is None:
            return Score(None, None, 0.0, False)
        right = sum(a == b for a, b in zip(order, gold))
        return Score(" ".join(map(str, order)), ",".join(map(str, order)), right / len(gold), order == gold)


class PromptTask(RowTask):
    """Prompts only: the answer is the last <answer> tag (else the last line); a `--reward` scores it."""

    kind = "prompts"
    kind_description = "prompts only; reward from --reward; correct when the reward reaches 1"

    def fields(self, row, where):
        return {"question": _text(self.get(row, where, "prompt", "question", "input"), "the prompt", where)}

    def prompt(self, fields):
        return fields["question"]

    def score(self, example, completion):
        answer = last_tag(completion)
        if answer is None:
            lines = [line for line in completion[-MAX_ANSWER_CHARS:].splitlines() if line.strip()]
            answer = lines[-1].strip() if lines else None
        if not answer:
            return Score(None, None, 0.0, False)
        return Score(answer, normalise(answer), 0.0, False)  # RewardTask supplies reward and correctness


KINDS: dict[str, type[RowTask]] = {"gsm8k": NumberTask, "math": MathTask, "mc": ChoiceTask,
                                   "ordering": OrderingTask, "mbpp": MBPPTask, "prompts": PromptTask}


def make_file_task(kind: str, spec: str, columns: Mapping[str, str] | None = None):
    """A task of `kind` over the rows of `spec` (a path, optionally `#split` for a saved DatasetDict)."""
    path, _, split = spec.partition("#")
    rows = load_rows(path, split or None)
    task = KINDS[kind](rows, f"{kind}:{spec}", columns, source=spec)
    task.sources = {"data": {"path": str(Path(path).resolve()), "sha256": fingerprint(path)}}
    return task
