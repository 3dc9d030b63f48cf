"""The splits a run reads are disjoint, and fixed by the task and the split seed."""

import hashlib
import itertools
import random
import re
from types import SimpleNamespace

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import Example, Task, as_task, get_task
from thickets.tasks.countdown import CountdownTask
from thickets.tasks.splits import make_splits, make_train_split, train_examples


@pytest.mark.parametrize("name", ["products", "countdown"])
def test_the_train_split_never_holds_a_validation_or_test_question(name):
    task = get_task(name)
    val, test = make_splits(task, 3, 40, 100)
    train = make_train_split(task, 3, 40, 100, 200)
    ids = [ex.id for ex in train]
    assert len(set(ids)) == 200
    assert not set(ids) & {ex.id for ex in val + test}
    assert not {task.duplicate_key(ex) for ex in train} & {task.duplicate_key(ex) for ex in val + test}
    assert [ex.id for ex in make_train_split(task, 3, 40, 100, 200)] == ids  # fixed by the seed
    assert [ex.id for ex in make_train_split(task, 4, 40, 100, 200)] != ids


def test_a_finite_task_trains_on_exactly_the_questions_left_over():
    small = get_task("small")  # five examples, every stream a permutation of them
    val, test = make_splits(small, 0, 2, 1)
    train = make_train_split(small, 0, 2, 1, 2)
    assert {ex.id for ex in train} == {f"small:{i}" for i in range(5)} - {ex.id for ex in val + test}
    # asked for more than there is (compare sizes the split by its budget), it gives what is left, in order
    assert train_examples(small, 0, 2, 1, 100) == train


def test_a_task_too_small_for_a_train_split_says_so():
    small = get_task("small")  # five examples (the tests' task)
    with pytest.raises(ThicketsError, match="only 1 examples outside its validation and test splits"):
        make_train_split(small, 0, 2, 2, 3)
    with pytest.raises(ThicketsError, match="no examples left for a train split"):
        make_train_split(small, 0, 3, 2, 1)


def _factors(ex):
    """The question of a products example, read independently of the task's hook: its sorted numbers."""
    return tuple(sorted(int(n) for n in re.findall(r"-?\d+", ex.prompt)))


def test_on_the_demo_settings_no_held_out_product_has_a_commuted_twin_in_train():
    # the README's products settings: split seed 0, 48 validation, 150 test, distillation's 256 train
    # questions; by id alone 17 test and 5 validation questions had their factors swapped in train
    task = get_task("products")
    val, test = make_splits(task, 0, 48, 150)
    train = make_train_split(task, 0, 48, 150, 256)
    trained = {_factors(ex) for ex in train}
    assert len(train) == 256
    assert [ex for ex in val + test if _factors(ex) in trained] == []


def test_a_countdown_puzzle_with_its_numbers_reordered_is_held_out_too():
    task = CountdownTask(min_numbers=2, max_numbers=2, max_value=3)  # a small space: twins are common
    val, test = make_splits(task, 0, 3, 5)
    train = train_examples(task, 0, 3, 5, 100)
    held_out = {(tuple(sorted(ex.data["numbers"])), ex.data["target"]) for ex in val + test}
    assert train
    assert not [ex for ex in train if (tuple(sorted(ex.data["numbers"])), ex.data["target"]) in held_out]


def test_each_task_says_which_examples_are_one_question():
    products, countdown, default = get_task("products"), get_task("countdown"), Task()

    def ask(task, prompt, **data):
        return task.duplicate_key(Example("x", prompt, data))

    q = "Solve the following multiplication: {}. Give only the result as your final answer."
    assert ask(products, q.format("2 * 8")) == ask(products, q.format("8 * 2")) != ask(products, q.format("2 * 9"))
    assert ask(countdown, "", numbers=[3, 5, 7], target=10) == ask(countdown, "", numbers=[7, 3, 5], target=10)
    assert ask(countdown, "", numbers=[3, 5, 7], target=10) != ask(countdown, "", numbers=[3, 5, 7], target=11)
    # the default: case, whitespace and sentence punctuation normalised; operators and numbers kept
    assert ask(default, "What is 2+2?") == ask(default, "  what IS\n2+2 ") == ask(default, "“What is 2+2”!")
    assert ask(default, "What is 1+1?") != ask(default, "What is 1-1?")
    assert ask(default, "Halve 3.5.") != ask(default, "Halve 35.") != ask(default, "Halve 3 5.")
    # a task written without the base class may have the hook, or gets the default
    inner = SimpleNamespace(name="plain", duplicate_key=lambda ex: "one")
    assert as_task(inner).duplicate_key(Example("x", "Q")) == "one"
    assert as_task(SimpleNamespace(name="plain")).duplicate_key(Example("x", "Q.")) == "q"


class _Echoes(Task):
    """Every question twice, the second time shouted, after all the first: one question, two ids."""

    name = "echoes"

    def examples(self, seed):
        order = random.Random(seed).sample(range(20), 20)
        yield from (Example(f"echoes:{i}", f"What is item {i}?") for i in order)
        yield from (Example(f"echoes:{i}!", f"WHAT IS ITEM {i}!") for i in order)


def test_the_train_split_leaves_out_near_copies_of_held_out_text():
    task = _Echoes()
    val, test = make_splits(task, 0, 4, 6)
    train = train_examples(task, 0, 4, 6, 100)
    held_out = {ex.prompt.casefold().rstrip("?!") for ex in val + test}
    assert train and not [ex for ex in train if ex.prompt.casefold().rstrip("?!") in held_out]


@pytest.mark.parametrize(("name", "digest"), [("products", "ddf9e3b0f7b7f5c8"), ("countdown", "dc85c56da1b804bf")])
def test_the_recorded_splits_of_existing_runs_do_not_move(name, digest):
    # runs record their validation and test examples and refuse others: scheme 1 is what every run
    # before 0.2 drew, and must keep drawing it (the demo's splits then, pinned)
    val, test = make_splits(get_task(name), 0, 48, 150, scheme=1)
    assert hashlib.sha256("\n".join(ex.id for ex in val + test).encode()).hexdigest()[:16] == digest


def test_split_scheme_2_keeps_every_question_in_one_split_once():
    task = get_task("products")
    val, test = make_splits(task, 0, 48, 150, scheme=2)
    train = make_train_split(task, 0, 48, 150, 256, scheme=2)
    for split in (val, test, train):
        assert len({_factors(ex) for ex in split}) == len(split)
    assert not {_factors(ex) for ex in val} & {_factors(ex) for ex in test}
    assert not {_factors(ex) for ex in val + test} & {_factors(ex) for ex in train}
    assert make_splits(task, 0, 48, 100, scheme=2)[1] == test[:100]  # a larger test split extends a smaller one
    with pytest.raises(ThicketsError, match="split scheme 3 is not one of 1, 2"):
        make_splits(task, 0, 48, 150, scheme=3)


def test_a_multi_task_run_judges_near_copies_by_each_task():
    task = get_task("products,countdown")
    by_task = {"products": get_task("products"), "countdown": get_task("countdown")}
    examples = list(itertools.islice(task.examples(0), 40))
    for ex in examples:
        inner = ex.data["example"]
        assert task.duplicate_key(ex) == f"{ex.data['task']}|{by_task[ex.data['task']].duplicate_key(inner)}"
    q = "Solve the following multiplication: {}. Give only the result as your final answer."
    twin = [
        Example(f"products|{i}", q.format(f), {"task": "products", "example": Example(str(i), q.format(f))})
        for i, f in enumerate(("2 * 8", "8 * 2"))
    ]
    assert task.duplicate_key(twin[0]) == task.duplicate_key(twin[1])
