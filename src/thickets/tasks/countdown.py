"""Countdown: reach a target with each given number exactly once and + - * /.

Two variants, the same examples:

`countdown` (thickets' own): no system prompt, "each number must be used exactly once"; reward
0.1 for any non-empty <answer> plus 1.0 for a correct equation; a trailing "= N" is allowed when N
is the equation's value; the value must equal the target exactly (fractions, no float rounding).

`countdown-paper` (the Neural Thickets authors' code, data_handlers/countdown.py and
utils/reward_score/countdown.py, so numbers are comparable with theirs): their system message
and wording ("each number can only be used once"); reward 0.1 x a graded format score (1 for
exactly "<think>...</think>\n<answer>...</answer>", else 0.1 for a think block plus 0.5 for an
answer block) plus 1.0 for a correct answer; the answer may hold only digits, + - * / ( ) and
spaces (so no "= N"), must use exactly the given numbers and come within 1e-5 of the target.
Where they eval() the answer we use the bounded parser, which also refuses `**` (their character
filter lets a power through, and `9**9**9**9` hangs their checker): the only verdicts that differ.

In both, only an equation with exactly the given numbers gets a vote key (their ensemble lets
only such equations vote), and no equation is ever eval()ed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction

from thickets.tasks.arithmetic import EquationError, evaluate_equation
from thickets.tasks.base import Example, Score, Task
from thickets.tasks.extract import last_tag
from thickets.tasks.registry import task

_PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number must be used exactly once. Show your work "
    "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>."
)

FORMAT_REWARD = 0.1
CORRECT_REWARD = 1.0
_MAX_INTERMEDIATE = 10**12  # evaluate_equation's default max_magnitude


class CountdownTask(Task):
    name = "countdown"
    description = "reach a target with 3-4 numbers and + - * /; 0.1 format + 1 correct"
    stop = ("</answer>",)
    system_prompt: str | None = None
    reward_range = (0.0, FORMAT_REWARD + CORRECT_REWARD)

    def __init__(self, min_numbers: int = 3, max_numbers: int = 4, max_value: int = 99, max_target: int = 1000):
        if not 2 <= min_numbers <= max_numbers or max_value < 1 or max_target < 1:
            raise ValueError("need 2 <= min_numbers <= max_numbers, max_value >= 1, max_target >= 1")
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.max_value, self.max_target = max_value, max_target

    @staticmethod
    def _combine(rng: random.Random, numbers: list[int]) -> int:
        """Fold the numbers in random order with random ops (a random tree), keeping every step an integer."""
        pool = list(numbers)
        while len(pool) > 1:
            a = pool.pop(rng.randrange(len(pool)))
            b = pool.pop(rng.randrange(len(pool)))
            ops = ["+", "-", "*"] + (["/"] if b != 0 and a % b == 0 else [])
            op = rng.choice(ops)
            value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
            if abs(value) > _MAX_INTERMEDIATE:  # the checker would refuse the only known solution
                return 0
            pool.append(value)
        return pool[0]

    def examples(self, seed: int) -> Iterator[Example]:
        """Endless and deterministic per seed; every target is reachable by construction."""
        rng = random.Random(f"countdown:{seed}")  # str seeds hash with sha512: stable across processes
        while True:
            numbers = [rng.randint(1, self.max_value) for _ in range(rng.randint(self.min_numbers, self.max_numbers))]
            target = self._combine(rng, numbers)
            if not 1 <= target <= self.max_target:
                continue
            yield Example(
                id=f"countdown:{','.join(map(str, numbers))}:{target}",
                prompt=_PROMPT.format(numbers=numbers, target=target),
                data={"numbers": numbers, "target": target},
            )

    def duplicate_key(self, example: Example) -> str:
        """The sorted numbers and the target: the same puzzle whatever order the numbers are shown in."""
        return f"{','.join(map(str, sorted(example.data['numbers'])))}->{example.data['target']}"

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The last <answer> and, when it is an equation, its key "sorted numbers=value".

        Which numbers were given is the example's, so every readable equation gets a key here;
        `score` keys only an equation that uses exactly the given numbers (None for others)."""
        answer, equation = _answer_equation(completion)
        return answer, _equation_key(equation)

    def score(self, example: Example, completion: str) -> Score:
        """Last <answer> wins; an empty or missing answer earns nothing, a present one 0.1, a correct one 1.1."""
        answer, equation = _answer_equation(completion)
        if answer is None:
            return Score(None, None, 0.0, False)
        if equation is None:
            return Score(answer, None, FORMAT_REWARD, False)
        value, used = equation
        uses_given = Counter(used) == Counter(example.data["numbers"])
        correct = uses_given and value == example.data["target"]
        # only an equation with exactly the given numbers may vote (as in the authors' ensemble):
        # one that invents numbers must not outvote a real attempt
        vote_key = _equation_key(equation) if uses_given else None
        return Score(answer, vote_key, FORMAT_REWARD + (CORRECT_REWARD if correct else 0.0), correct)


def _answer_equation(completion: str) -> tuple[str | None, tuple[Fraction, list[int]] | None]:
    """(the last non-empty <answer>, its (value, numbers) when it is an acceptable equation)."""
    answer = last_tag(completion)
    if not answer:
        return None, None
    try:
        return answer, evaluate_equation(answer)
    except EquationError:
        return answer, None


def _equation_key(equation: tuple[Fraction, list[int]] | None) -> str | None:
    """The vote key of an equation: its numbers sorted, and its value."""
    if equation is None:
        return None
    value, used = equation
    return f"{','.join(map(str, sorted(used)))}={value}"


PAPER_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in your mind and then "
    "provide the user with the answer."
)
_PAPER_PROMPT = _PROMPT.replace("each number must be used exactly once", "each number can only be used once")
_PAPER_CHARS = frozenset("0123456789+-*/() ")


def paper_format_score(completion: str) -> float:
    """The authors' format score of "<think>" + completion (their prompt opens the think block):
    1.0 for exactly "<think>...</think>\n<answer>...</answer>", else 0.1 for a think block and 0.5
    for an answer block. With str.find, not their regexes, so it stays linear on hostile text."""
    text = "<think>" + completion
    middle = text.find("</think>\n<answer>", len("<think>"))
    if text.endswith("</answer>") and 0 <= middle <= len(text) - len("</think>\n<answer></answer>"):
        return 1.0
    think = text.find("</think>", len("<think>")) >= 0
    opened = text.find("<answer>")
    answer = opened >= 0 and text.find("</answer>", opened + len("<answer>")) >= 0
    return 0.1 * think + 0.5 * answer


class CountdownPaperTask(CountdownTask):
    name = "countdown-paper"
    description = "countdown as the authors' code scores it: their prompt and system message, graded format reward"
    system_prompt: str | None = PAPER_SYSTEM

    def examples(self, seed: int) -> Iterator[Example]:
        for ex in super().examples(seed):
            yield Example(ex.id, _PAPER_PROMPT.format(numbers=ex.data["numbers"], target=ex.data["target"]), ex.data)

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        """The last <answer>, stripped, and its key as their vote makes it, except that which numbers
        were given is the example's: here any equation that passes their character filter and has
        numbers up to 1000 gets a key, where `score` keys only one with exactly the given numbers."""
        raw = _raw_last_answer(completion)
        answer = raw.strip() if raw else None
        if not answer:
            return None, None
        return answer, _paper_vote_key(answer, None)

    def score(self, example: Example, completion: str) -> Score:
        """Their reward checks the answer as written (a newline inside the tags fails the character
        filter); their vote strips it first and lets only equations with numbers up to 1000 vote."""
        fmt = FORMAT_REWARD * paper_format_score(completion)
        raw = _raw_last_answer(completion)
        answer = raw.strip() if raw else None
        if not answer:
            return Score(None, None, fmt, False)
        numbers = sorted(example.data["numbers"])
        checked = _paper_equation(raw, numbers)
        correct = checked is not None and abs(float(checked[0]) - float(example.data["target"])) < 1e-5
        vote_key = _paper_vote_key(answer, numbers)
        return Score(answer, vote_key, fmt + (CORRECT_REWARD if correct else 0.0), correct)


def _raw_last_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer>, unstripped (as the authors' regex reads it)."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end] if start >= 0 else None


def _paper_equation(text: str | None, numbers: list[int] | None) -> tuple[Fraction, list[int]] | None:
    """(value, sorted numbers) when the text passes their character filter, parses, and uses exactly
    the given numbers (any numbers when `numbers` is None); else None."""
    if not text or not set(text) <= _PAPER_CHARS:
        return None
    try:
        value, used = evaluate_equation(text)
    except EquationError:
        return None
    return (value, sorted(used)) if numbers is None or sorted(used) == numbers else None


def _paper_vote_key(answer: str, numbers: list[int] | None) -> str | None:
    """Their vote's key of a stripped answer: only an equation (with exactly `numbers`, when given)
    whose numbers are all at most 1000 votes."""
    voted = _paper_equation(answer, numbers)
    if voted is None or max(voted[1]) > 1000:
        return None
    return _equation_key(voted)


@task("countdown", "reach a target with 3-4 numbers and + - * /; 0.1 format + 1 correct")
def countdown() -> CountdownTask:
    return CountdownTask()


@task(
    "countdown-paper",
    "countdown with the authors' prompt, system message and graded format reward, for numbers comparable with theirs",
)
def countdown_paper() -> CountdownPaperTask:
    return CountdownPaperTask()
