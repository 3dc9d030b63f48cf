"""Tasks read from data files: formats, column mapping, each kind's verifier, and bad input."""

from __future__ import annotations

import csv
import json

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import get_task, score_one
from thickets.tasks.answers import (
    extract_choice,
    extract_final_number,
    extract_order,
    last_boxed,
    latex_is_safe,
)
from thickets.tasks.files.data import load_rows, parse_columns
from thickets.tasks.splits import make_splits

GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A pen costs $1.50. What do 3 pens cost?", "answer": "#### 4.50"},
    {"question": "What is half of 1?", "answer": "#### 0.5"},
    {"question": "How many cents in $12?", "answer": "#### 1,200"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- formats ------------------------------------------------------------------------------------


def test_every_format_gives_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"question": "q1", "answer": "1", "choices": ["a", "b"]},
        {"question": "q2", "answer": "2", "choices": ["c", "d"]},
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "choices": json.dumps(r["choices"])})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(tmp_path / "dict"))
    for name in ("d.jsonl", "d.json", "cols.json", "d.csv", "d.parquet", "saved", "dict"):
        assert load_rows(tmp_path / name) == rows, name
    assert load_rows(tmp_path / "dict", "test") == rows[:1]
    with pytest.raises(ThicketsError, match="no split 'dev'; it has train, test"):
        load_rows(tmp_path / "dict", "dev")


def test_a_malformed_row_names_the_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    with pytest.raises(ThicketsError, match=r"bad\.jsonl:3: not valid JSON"):
        load_rows(p)
    p.write_text('{"question": "a"}\n[1, 2]\n')
    with pytest.raises(ThicketsError, match=r"bad\.jsonl:2: each line must be a JSON object"):
        load_rows(p)
    c = tmp_path / "bad.csv"
    c.write_text("question,answer\nq1,1\nq2,2,extra\n")
    with pytest.raises(ThicketsError, match=r"bad\.csv:3: expected 2 cells as in the header, got 3"):
        load_rows(c)
    with pytest.raises(ThicketsError, match=r"unknown format .txt"):
        (tmp_path / "x.txt").write_text("hi")
        load_rows(tmp_path / "x.txt")
    with pytest.raises(ThicketsError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl")
    with pytest.raises(ThicketsError, match="not one saved by datasets"):
        load_rows(tmp_path)


def test_a_missing_column_names_it_and_the_columns_that_exist(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "gold": "#### 3"}])
    with pytest.raises(ThicketsError) as err:
        get_task(f"gsm8k:{p}")
    msg = str(err.value)
    assert "d.jsonl row 1" in msg and "'question'" in msg and "columns: gold, query" in msg
    with pytest.raises(ThicketsError, match=r"no column 'prompt_text' \(mapped to question\); columns: gold, query"):
        get_task(f"gsm8k:{p}", {"question": "prompt_text", "answer": "gold"})
    task = get_task(f"gsm8k:{p}", parse_columns(["question=query", "answer=gold"]))
    (ex,), _ = make_splits(task, 0, 1)
    assert ex.prompt.startswith("q") and ex.data["answer"] == "3"
    with pytest.raises(ThicketsError, match="FIELD=COLUMN"):
        parse_columns(["question"])
    with pytest.raises(ThicketsError, match="--columns applies to tasks read from a file"):
        get_task("countdown", {"question": "x"})


def test_file_tasks_split_disjointly_and_record_the_data_hash(tmp_path):
    p = write_jsonl(tmp_path / "gsm.jsonl", GSM)
    task = get_task(f"gsm8k:{p}")
    val, test = make_splits(task, 1, 2, 2)
    assert {e.id for e in val}.isdisjoint(e.id for e in test) and len(val + test) == 4
    assert make_splits(get_task(f"gsm8k:{p}"), 1, 2, 2) == (val, test)
    first = task.sources["data"]["sha256"]
    write_jsonl(p, GSM[:3])
    assert get_task(f"gsm8k:{p}").sources["data"]["sha256"] != first
    with pytest.raises(ThicketsError, match="has only 1 examples left"):
        make_splits(get_task(f"gsm8k:{p}"), 1, 2, 2)


# -- verifiers ----------------------------------------------------------------------------------


def gsm_example(tmp_path, i):
    task = get_task(f"gsm8k:{write_jsonl(tmp_path / 'g.jsonl', GSM)}")
    return task, task.example_from_row(GSM[i])


@pytest.mark.parametrize(
    "i, completion, correct",
    [
        (0, "3 + 4 = 7 apples.\n#### 7", True),
        (0, "The answer is 7.", True),
        (0, "first 3, then 4 more, so 7", True),
        (0, "#### 8", False),
        (1, "3 x 1.50 = 4.5\n#### $4.50", True),
        (2, "#### 1/2", True),
        (2, "#### \\frac{1}{2}", True),
        (2, "#### 50%", True),
        (3, "#### 1200", True),
        (3, "#### 1,200 cents", True),
    ],
)
def test_gsm8k_numbers_are_equal_however_written(tmp_path, i, completion, correct):
    task, ex = gsm_example(tmp_path, i)
    s = task.score(ex, completion)
    assert s.correct is correct and s.reward == float(correct)


def test_gsm8k_vote_keys_merge_equal_numbers(tmp_path):
    task, ex = gsm_example(tmp_path, 2)
    keys = {task.score(ex, c).vote_key for c in ("#### 0.5", "#### 1/2", "#### \\frac{1}{2}", "#### .5 of it")}
    assert keys - {None} == {"1/2"}
    # a percent sign is a unit (GSM8K's golds for "what percent" questions are bare numbers)
    assert task.score(ex, "#### 50%").vote_key == task.score(ex, "#### 50").vote_key == "50"
    assert task.score(ex, "no numbers here").answer is None


MATH = [
    {"problem": "Compute 1/2.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Solve x^2=4, x>0.", "answer": "2"},
    {"problem": "Simplify sqrt(8).", "answer": "2\\sqrt{2}"},
]


@pytest.mark.parametrize(
    "i, completion, correct",
    [
        (0, "So the answer is \\boxed{0.5}", True),
        (0, "\\boxed{1/2}", True),
        (0, "\\boxed{\\dfrac{1}{2}} and \\boxed{\\frac{2}{4}}", True),
        (0, "\\boxed{\\frac{1}{3}}", False),
        (0, "the answer is 1/2", False),  # no \boxed: not extracted
        (1, "x = \\boxed{2}", True),
        (2, "\\boxed{\\sqrt{8}}", True),
        (2, "\\boxed{2\\sqrt{3}}", False),
    ],
)
def test_math_answers_are_checked_by_math_verify(tmp_path, i, completion, correct):
    task = get_task(f"math:{write_jsonl(tmp_path / 'm.jsonl', MATH)}")
    s = task.score(task.example_from_row(MATH[i]), completion)
    assert s.correct is correct and s.reward == float(correct)


def test_math_vote_keys_put_equal_values_together(tmp_path):
    task = get_task(f"math:{write_jsonl(tmp_path / 'm.jsonl', MATH)}")
    ex = task.example_from_row(MATH[0])
    keys = [task.score(ex, f"\\boxed{{{a}}}").vote_key for a in ("0.5", "1/2", "\\frac{1}{2}", "\\frac12")]
    assert len(set(keys)) == 1 and keys[0] is not None
    assert task.score(ex, "\\boxed{\\frac{1}{3}}").vote_key != keys[0]


MC = [
    {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": "B"},
    {"question": "Sky?", "A": "green", "B": "blue", "C": "red", "answer": 1},
    {"question": "Cats?", "choices": ["meow", "woof"], "answer": "meow"},
]


@pytest.mark.parametrize(
    "i, completion, letter",
    [
        (0, "The answer is (B).", "B"),
        (0, "Answer: B", "B"),
        (0, "B. 4", "B"),
        (0, "<answer>B</answer>", "B"),
        (0, "\\boxed{B}", "B"),
        (0, "I am not sure. The answer is **B**", "B"),
        (0, "The answer is (E).", None),  # only A-D exist
        (0, "Because 2+2 is four", None),
        (1, "the answer is b", "B"),
        (2, "(A) meow", "A"),
    ],
)
def test_multiple_choice_letters(tmp_path, i, completion, letter):
    task = get_task(f"mc:{write_jsonl(tmp_path / 'mc.jsonl', MC)}")
    ex = task.example_from_row(MC[i])
    s = task.score(ex, completion)
    assert s.answer == letter
    gold = {0: "B", 1: "B", 2: "A"}[i]
    assert s.correct is (letter == gold)


def test_ordering_gives_partial_reward_but_counts_only_the_exact_order_correct(tmp_path):
    rows = [
        {"sentences": [f"Sentence {k}." for k in range(1, 6)]},
        {"storyid": "x", "sentence1": "A.", "sentence2": "B.", "sentence3": "C.", "sentence4": "D.", "sentence5": "E."},
    ]
    task = get_task(f"ordering:{write_jsonl(tmp_path / 'o.jsonl', rows)}")
    for row in rows:
        ex = task.example_from_row(row)
        gold = ex.data["answer"]
        shown = ex.data["shown"]
        story = [shown[k - 1] for k in gold]
        assert story == (row.get("sentences") or [row[f"sentence{k}"] for k in range(1, 6)])  # gold reads the story
        assert gold != [1, 2, 3, 4, 5]  # the shown order is shuffled
        exact = task.score(ex, f"<answer>{' '.join(map(str, gold))}</answer>")
        assert exact.correct and exact.reward == 1.0
        swapped = list(gold)
        swapped[0], swapped[1] = swapped[1], swapped[0]
        partial = task.score(ex, " ".join(map(str, swapped)))
        assert not partial.correct and partial.reward == pytest.approx(0.6)
        assert task.score(ex, "<answer>1 1 2 3 4</answer>").answer is None  # not a permutation
    summary = score_one(task, rows[0], "<answer>1 2 3 4 5</answer>")
    assert summary["reference"] == task.example_from_row(rows[0]).data["answer"]


def test_mbpp_file_task(tmp_path):
    rows = [{"task_id": 1, "text": "Write double(x).", "test_list": ["assert double(2) == 4"]}]
    task = get_task(f"mbpp:{write_jsonl(tmp_path / 'mbpp.jsonl', rows)}")
    (ex,), _ = make_splits(task, 0, 1)
    assert task.score(ex, "```python\ndef double(x):\n    return 2 * x\n```").correct
    assert not task.score(ex, "```python\ndef double(x):\n    return x\n```").correct


def test_bare_kinds_score_but_do_not_search():
    assert (
        get_task("gsm8k")
        .score(get_task("gsm8k").example_from_row({"question": "q", "answer": "#### 5"}), "#### 5")
        .correct
    )
    with pytest.raises(ThicketsError, match="use --task gsm8k:PATH"):
        make_splits(get_task("gsm8k"), 0, 1)
    with pytest.raises(ThicketsError, match="needs a data file"):
        get_task("math:")


# -- adversarial completions --------------------------------------------------------------------

ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10}}-7}",
    "\\boxed{(9^9)^{(9^9)}}",
    "\\boxed{2**2**2**2**2**2}",
    "\\boxed{1e999999999}",
    "\\boxed{99999999!}",
    "#### 1e999999999",
    "#### " + "9" * 5000,
    "#### 9**9**9**9",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "7" * 1_000_000,
    "x" * 1_000_000 + "#### 7",
    "<answer>" * 200_000 + "B",
    "The answer is (" * 100_000,
    "#### ٧",  # an Arabic-Indic seven
    "#### ７",  # a full-width seven
    "\\boxed{٧}",
    "<think>#### 7</think><answer>",  # answer in the wrong tag, unclosed answer
    "\\boxed{" * 100_000,
    "1 2 3 4 5 " * 100_000,
]


@pytest.mark.parametrize(
    "kind, rows",
    [
        ("gsm8k", [{"question": "q", "answer": "#### 7"}]),
        ("math", [{"problem": "q", "answer": "7"}]),
        ("mc", [{"question": "q", "choices": ["a", "b"], "answer": "B"}]),
        ("ordering", [{"sentences": ["a.", "b.", "c.", "d.", "e."]}]),
    ],
)
@pytest.mark.timeout(120)  # a hang guard: extraction stays linear on hostile text
def test_adversarial_completions_are_scored_without_hanging(tmp_path, kind, rows):
    task = get_task(f"{kind}:{write_jsonl(tmp_path / 'a.jsonl', rows)}")
    ex = task.example_from_row(rows[0])
    for completion in ADVERSARIAL:
        s = task.score(ex, completion)
        assert 0.0 <= s.reward <= 1.0
        if kind == "math" and "9^" in completion:
            assert not s.correct


def test_unicode_digits_do_not_count_as_ascii_ones_but_full_width_do(tmp_path):
    assert extract_final_number("#### ７") == "7"
    assert extract_final_number("#### ٧") is None


def test_the_latex_guard():
    for safe in ("2^{10}", "\\frac{1}{2}", "x^2+1", "3^{2005}", "10!", "(1,2)"):
        assert latex_is_safe(safe), safe
    for bomb in ("9^{9^9}", "2^{100000}", "(9^9)^{(9^9)}", "99999!", "1e99999", "1" * 100, "{" * 50 + "}" * 50):
        assert not latex_is_safe(bomb), bomb


def test_extractors_on_edge_cases():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{3}") == "3"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_choice("A", 4) == "A" and extract_choice("Answer: (C)", 4) == "C"
    assert extract_order("first try 1 2 3\n<answer>3 1 2</answer>", 3) == (3, 1, 2)
    assert extract_order("3 1 2", 4) is None
