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
from thickets.tasks.files.vqa import VQATask
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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The final number as written, and its exact value as the key (None when it is no number)."""
        answer, value = final_number(completion)
        return answer, None if value is None else number_key(value)

    def score(self, example: Example, completion: str) -> Score:
        answer, value = final_number(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        if value is None:
            return Score(answer, None, 0.0, False)
        gold = Fraction(example.data["answer"])
        # '50%' is 50 (GSM8K's convention) and, where the gold is the fraction, 1/2 as well
        correct = value == gold or (is_percent(answer) and value / 100 == gold)
        return Score(answer, number_key(value), float(correct), correct)


def final_number(completion: str) -> tuple[str | None, Fraction | None]:
    """GSM8K's final number of a completion as written, and its exact value (None when it is not a number)."""
    answer = extract_final_number(completion)
    return answer, None if answer is None else parse_number(answer)


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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The last \\boxed{} answer and math-verify's key for it, as `score` gives them: the key does not
        depend on the reference, so math-verify parses the answer in the scorer sandbox (with no reference,
        nothing is verified). No key for an unreadable or unsafe answer."""
        answer, key, _ = _math_verdicts([""], [completion])[0]
        return answer, key

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        verdicts = _math_verdicts([ex.data["answer"] for ex in examples], completions)
        return [
            Score(answer, key, float(correct is True), correct is True, unscored=correct is None)
            for answer, key, correct in verdicts
        ]

    def score(self, example: Example, completion: str) -> Score:
        return self.score_batch([example], [completion])[0]


def _math_verdicts(
    golds: Sequence[str], completions: Sequence[str]
) -> list[tuple[str | None, str | None, bool | None]]:
    """(the last boxed answer, math-verify's vote key, whether it equals the gold) of each completion, from
    math-verify in the scorer sandbox. The key is None when the answer is unreadable, unsafe, or its
    scoring failed; a blank gold judges nothing (never correct) but still gives the key. The verdict is
    None (unscored) where the scorer crashed or stalled twice: no verdict, not a wrong answer."""
    answers = [last_boxed(c) for c in completions]
    todo = [i for i, a in enumerate(answers) if a is not None and latex_is_safe(a)]
    verdicts: dict[int, dict[str, Any]] = {}
    unscored: set[int] = set()
    if todo:
        warm("math_warm")
        for i, out in zip(todo, sandboxed("math_score", [(golds[i], answers[i]) for i in todo])):
            if out.ok and isinstance(out.value, dict) and out.value.get("parsed"):
                verdicts[i] = out.value
            elif out.unscored:
                unscored.add(i)
    results: list[tuple[str | None, str | None, bool | None]] = []
    for i, answer in enumerate(answers):
        v = verdicts.get(i)
        if answer is None or v is None:  # none, or unreadable, unsafe, or its scoring failed
            results.append((answer, None, None if i in unscored else False))
        else:
            key = v.get("key")
            results.append((answer, key if isinstance(key, str) else None, v.get("correct") is True))
    return results


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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The chosen letter, which is its own key, among as many letters as the task's examples have
        choices at most (all 26 when it has none). `score` knows the example's own choices, so the two
        differ where a completion names a letter beyond an example's choices, or answers with a
        choice's text instead of its letter (no answer here); on examples with the most choices and
        answers given by letter they agree."""
        n = max((len(ex.data["choices"]) for ex in self._examples), default=len(LETTERS))
        letter = choice_letter(completion, n)
        return letter, letter

    def score(self, example: Example, completion: str) -> Score:
        choices = example.data["choices"]
        letter = choice_letter(completion, len(choices), choices)
        if letter is None:
            return Score(None, None, 0.0, False)
        correct = letter == example.data["answer"]
        return Score(letter, letter, float(correct), correct)


def choice_letter(completion: str, n_choices: int, choices: Sequence[str] = ()) -> str | None:
    """The letter a completion chooses among the first `n_choices`; failing that, when the choices' texts
    are known, the letter of the one choice whose text the reply is exactly ("4" among "3", "4", "5")."""
    letter = extract_choice(completion, n_choices)
    if letter is None and choices:
        said = (last_tag(completion) or completion[:MAX_ANSWER_CHARS]).strip().rstrip(".")
        matches = [i for i, c in enumerate(choices) if c.strip() == said]
        letter = LETTERS[matches[0]] if len(matches) == 1 else None
    return letter


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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The order ("3 1 2") and its key ("3,1,2"), for as many sentences as the task's examples have,
        which is `score`'s when they all have the same number. Where the numbers differ, the order of the
        largest number of sentences that the completion gives (of 2 to 9 when the task has no examples),
        where `score` reads only the example's own number."""
        counts = sorted({len(ex.data["answer"]) for ex in self._examples}, reverse=True) or range(9, 1, -1)
        for n in counts:
            if (order := extract_order(completion, n)) is not None:
                return _order_answer(order)
        return None, None

    def score(self, example: Example, completion: str) -> Score:
        gold = tuple(example.data["answer"])
        order = extract_order(completion, len(gold))
        if order is None:
            return Score(None, None, 0.0, False)
        answer, key = _order_answer(order)
        right = sum(a == b for a, b in zip(order, gold))
        return Score(answer, key, right / len(gold), order == gold)


def _order_answer(order: tuple[int, ...]) -> tuple[str, str]:
    """(the answer, the vote key) of a sentence order."""
    return " ".join(map(str, order)), ",".join(map(str, order))


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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The last <answer> tag, else the last non-blank line; normalised as the key."""
        return prompt_answer(completion)

    def score(self, example: Example, completion: str) -> Score:
        answer, key = prompt_answer(completion)
        return Score(answer, key, 0.0, False)  # RewardTask supplies reward and correctness


def prompt_answer(completion: str) -> tuple[str | None, str | None]:
    """(the last <answer> tag, else the last non-blank line; its normalised text), or (None, None)."""
    answer = last_tag(completion)
    if answer is None:
        lines = [line for line in completion[-MAX_ANSWER_CHARS:].splitlines() if line.strip()]
        answer = lines[-1].strip() if lines else None
    return (answer, normalise(answer)) if answer else (None, None)


KINDS: dict[str, type[RowTask]] = {
    "gsm8k": NumberTask,
    "math": MathTask,
    "mc": ChoiceTask,
    "ordering": OrderingTask,
    "mbpp": MBPPTask,
    "prompts": PromptTask,
    "vqa": VQATask,
}


def make_file_task(kind: str, spec: str, columns: Mapping[str, str] | None = None) -> RowTask:
    """A task of `kind` over the rows of `spec` (a path, optionally `#split` for a saved DatasetDict)."""
    path, _, split = spec.partition("#")
    rows = load_rows(path, split or None)
    task = KINDS[kind](rows, f"{kind}:{spec}", columns, source=spec)
    task.sources = {"data": {"path": str(Path(path).resolve()), "sha256": fingerprint(path)}}
    return task
