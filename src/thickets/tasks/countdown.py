"""Countdown: reach a target with each given number exactly once and + - * /.

As in TinyZero and the Neural Thickets paper: reasoning in <think> tags, the equation in
<answer> tags, reward 0.1 for a present answer plus 1.0 for a correct equation. Unlike
their eval()-based check, equations go through the bounded parser in `arithmetic`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterator

from .arithmetic import EquationError, evaluate_equation
from .base import Example, Score
from .extract import last_tag

_PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number must be used exactly once. Show your work "
    "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
    "<answer> (1 + 2) / 3 </answer>."
)

FORMAT_REWARD = 0.1
CORRECT_REWARD = 1.0
_MAX_INTERMEDIATE = 10**12  # evaluate_equation's default max_magnitude


class CountdownTask:
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

    def score(self, example: Example, completion: str) -> Score:
        """Last <answer> wins; an empty or missing answer earns nothing, a present one 0.1, a correct one 1.1."""
        answer = last_tag(completion)
        if not answer:
            return Score(None, None, 0.0, False)
        try:
            value, used = evaluate_equation(answer)
        except EquationError:
            return Score(answer, None, FORMAT_REWARD, False)
        uses_given = Counter(used) == Counter(example.data["numbers"])
        correct = uses_given and value == example.data["target"]
        # only an equation with exactly the given numbers may vote (as in the authors' ensemble):
        # one that invents numbers must not outvote a real attempt
        vote_key = f"{','.join(map(str, sorted(used)))}={value}" if uses_given else None
        return Score(answer, vote_key, FORMAT_REWARD + (CORRECT_REWARD if correct else 0.0), correct)
