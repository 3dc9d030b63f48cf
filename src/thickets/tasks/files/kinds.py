"""Tasks over a user's data file, one class per kind the paper evaluates.

`gsm8k:FILE` (final number), `math:FILE` (\\boxed{} through math-verify: MATH-500,
OlympiadBench), `mc:FILE` (multiple choice), `ordering:FILE` (ROCStories-style sentence
order), `mbpp:FILE` (code with asserts, in the sandbox) and `prompts:FILE` (prompts only,
scored by the user's `--reward`). Each row keeps its original columns in `data["row"]`,
which is what a user's reward function receives.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.answers import (
    LETTERS,
    extract_choice,
    extract_final_number,
    extract_order,
    is_percent,
    last_boxed,
    latex_is_safe,
    number_key,
    parse_latex,
    parse_number,
)
from thickets.tasks.base import Example, Score
from thickets.tasks.extract import MAX_ANSWER_CHARS, last_tag, normalise
from thickets.tasks.files.data import fingerprint, load_rows
from thickets.tasks.files.mbpp import MBPPTask
from thickets.tasks.files.rows import RowTask
from thickets.tasks.third_party import sandboxed, warm


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ThicketsError(f"{where}: {what} must be non-empty text, got {value!r:.60}")
    return value


class NumberTask(RowTask):
    kind = "gsm8k"
    kind_description = "final number after ####, numeric equivalence"
    _PROMPT = (
        "{question}\n\nSolve the problem step by step. Then give the final answer as a number "
        "after '####', like this: #### 42"
    )

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        question = _text(self.get(row, where, "question", "problem", "prompt", "input"), "the question", where)
        answer = self.get(row, where, "answer", "target", "output", "solution")
        text = str(answer)
        gold = parse_number(text) if "####" not in text else None
        if gold is None and (extracted := extract_final_number(text)) is not None:
            gold = parse_number(extracted)
        if gold is None:
            raise ThicketsError(f"{where}: cannot read a number from the answer {text[-60:]!r}")
        return {"question": question, "answer": number_key(gold)}

    def score(self, example: Example, completion: str) -> Score:
        answer = extract_final_number(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        value = parse_number(answer)
        if value is None:
            return Score(answer, None, 0.0, False)
        gold = Fraction(example.data["answer"])
        # '50%' is 50 (GSM8K's convention) and, where the gold is the fraction, 1/2 as well
        correct = value == gold or (is_percent(answer) and value / 100 == gold)
        return Score(answer, number_key(value), float(correct), correct)


class MathTask(RowTask):
    """LaTeX answers judged by math-verify, which runs in the scorer sandbox: it hands some answers to
    sympy's parse_expr (an eval), so it never sees model output in our process."""

    kind = "math"
    kind_description = "\\boxed{} answer, equivalence by math-verify"
    packages = ("math-verify",)
    _PROMPT = "{question}\n\nReason step by step, and put your final answer within \\boxed{{}}."

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        question = _text(self.get(row, where, "question", "problem", "prompt", "input"), "the problem", where)
        answer = self.get(row, where, "answer", "final_answer", "solution")
        if isinstance(answer, list) and answer:  # OlympiadBench keeps final_answer as a list
            answer = answer[0]
        answer = str(answer)
        gold = last_boxed(answer) or answer.strip().strip("$").strip()
        if parse_latex(gold) is None:
            raise ThicketsError(f"{where}: math-verify cannot read the reference answer {gold[:60]!r}")
        return {"question": question, "answer": gold}

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        answers = [last_boxed(c) for c in completions]
        todo = [i for i, a in enumerate(answers) if a is not None and latex_is_safe(a)]
        verdicts: dict[int, dict[str, Any]] = {}
        if todo:
            warm("math_warm")
            for i, out in zip(todo, sandboxed("math_score", [(examples[i].data["answer"], answers[i]) for i in todo])):
                if out.ok and isinstance(out.value, dict) and out.value.get("parsed"):
                    verdicts[i] = out.value
        scores: list[Score] = []
        for i, answer in enumerate(answers):
            v = verdicts.get(i)
            if answer is None:
                scores.append(Score(None, None, 0.0, False))
            elif v is None:  # unreadable, unsafe, or its scoring failed
                scores.append(Score(answer, None, 0.0, False))
            else:
                correct = v.get("correct") is True
                key = v.get("key")
                scores.append(Score(answer, key if isinstance(key, str) else None, float(correct), correct))
        return scores

    def score(self, example: Example, completion: str) -> Score:
        return self.score_batch([example], [completion])[0]


class ChoiceTask(RowTask):
    kind = "mc"
    kind_description = "multiple choice, letter extracted from 'The answer is (B)' and the like"

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        question = _text(self.get(row, where, "question", "prompt", "input"), "the question", where)
        labels = None
        if "choices" in self.columns or any(n in row for n in ("choices", "options")):
            choices = self.get(row, where, "choices", "options")
            if isinstance(choices, dict) and "text" in choices:  # the layout of ARC and others on the hub
                labels, choices = choices.get("label"), choices["text"]
        else:
            choices = [row[c] for c in LETTERS if c in row]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise ThicketsError(f"{where}: choices must be a list of 2 to 26 options (or columns A, B, C, ...)")
        answer = self.get(row, where, "answer", "label", "target", "answerKey")
        index = _choice_index(answer, [str(c) for c in choices], labels, where)
        return {"question": question, "choices": [str(c) for c in choices], "answer": LETTERS[index]}

    def prompt(self, fields: dict[str, Any]) -> str:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(fields["choices"]))
        return (
            f"{fields['question']}\n\n{options}\n\nAnswer with the letter of the correct choice, "
            f"like this: The answer is (A)."
        )

    def score(self, example: Example, completion: str) -> Score:
        choices = example.data["choices"]
        letter = extract_choice(completion, len(choices))
        if letter is None:  # a reply that is exactly one choice's text ("4" among "3", "4", "5") names it
            said = (last_tag(completion) or completion[:MAX_ANSWER_CHARS]).strip().rstrip(".")
            matches = [i for i, c in enumerate(choices) if c.strip() == said]
            letter = LETTERS[matches[0]] if len(matches) == 1 else None
        if letter is None:
            return Score(None, None, 0.0, False)
        correct = letter == example.data["answer"]
        return Score(letter, letter, float(correct), correct)


def _choice_index(answer: Any, choices: list[str], labels: list[Any] | None, where: str) -> int:
    """Which choice the gold answer names: through the row's own labels when it has them (ARC labels
    some questions "1".."4"); a JSON integer is a 0-based index (MMLU's layout); text is a choice's
    text first (an answer "3" among choices "1".."4" is the third), else a letter, else an index."""
    n = len(choices)
    text = str(answer).strip()
    if isinstance(answer, int) and not isinstance(answer, bool) and labels is None:
        if not 0 <= answer < n:
            raise ThicketsError(f"{where}: the answer index {answer} is outside the {n} choices")
        return answer
    if labels is not None:
        if not isinstance(labels, list) or len(labels) != n:
            raise ThicketsError(f"{where}: choice labels must be a list as long as the choices")
        names = [str(x).strip() for x in labels]
        if text in names:
            return names.index(text)
        raise ThicketsError(f"{where}: the answer {answer!r} is not one of the choice labels {names}")
    if text in choices:
        return choices.index(text)
    bare = text.strip("()")
    if len(bare) == 1 and bare.upper() in LETTERS[:n] and not bare.isdigit():
        return LETTERS.index(bare.upper())
    if text.isdigit():
        index = int(text)  # an index into the choices, counted from 0
        if not 0 <= index < n:
            raise ThicketsError(f"{where}: the answer index {index} is outside the {n} choices")
        return index
    raise ThicketsError(f"{where}: the answer {answer!r} is not a label, a choice, a letter or an index")


class OrderingTask(RowTask):
    """Sentences given shuffled; reward is the share of positions right, correct only for the exact order."""

    kind = "ordering"
    kind_description = "put shuffled sentences in order; reward = share of positions right, correct = exact"

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
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

    def prompt(self, fields: dict[str, Any]) -> str:
        listing = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(fields["shown"]))
        n = len(fields["shown"])
        example = " ".join(map(str, [2, 1] + list(range(3, n + 1))))
        return (
            f"Put these sentences in the order that tells a coherent story:\n{listing}\n\n"
            f"Answer with the sentence numbers in story order inside <answer></answer> tags, "
            f"like this: <answer>{example}</answer>"
        )

    def score(self, example: Example, completion: str) -> Score:
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
    needs_reward = True

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        return {"question": _text(self.get(row, where, "prompt", "question", "input"), "the prompt", where)}

    def prompt(self, fields: dict[str, Any]) -> str:
        question: str = fields["question"]
        return question

    def score(self, example: Example, completion: str) -> Score:
        answer = last_tag(completion)
        if answer is None:
            lines = [line for line in completion[-MAX_ANSWER_CHARS:].splitlines() if line.strip()]
            answer = lines[-1].strip() if lines else None
        if not answer:
            return Score(None, None, 0.0, False)
        return Score(answer, normalise(answer), 0.0, False)  # RewardTask supplies reward and correctness


KINDS: dict[str, type[RowTask]] = {
    "gsm8k": NumberTask,
    "math": MathTask,
    "mc": ChoiceTask,
    "ordering": OrderingTask,
    "mbpp": MBPPTask,
    "prompts": PromptTask,
}


def make_file_task(kind: str, spec: str, columns: Mapping[str, str] | None = None) -> RowTask:
    """A task of `kind` over the rows of `spec` (a path, optionally `#split` for a saved DatasetDict)."""
    path, _, split = spec.partition("#")
    rows = load_rows(path, split or None)
    task = KINDS[kind](rows, f"{kind}:{spec}", columns, source=spec)
    task.sources = {"data": {"path": str(Path(path).resolve()), "sha256": fingerprint(path)}}
    return task
