"""The splits a run reads are disjoint, and fixed by the task and the split seed."""

import pytest

from thickets.errors import ThicketsError
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits, make_train_split, train_examples


@pytest.mark.parametrize("name", ["products", "countdown"])
def test_the_train_split_never_holds_a_validation_or_test_question(name):
    task = get_task(name)
    val, test = make_splits(task, 3, 40, 100)
    train = make_train_split(task, 3, 40, 100, 200)
    ids = [ex.id for ex in train]
    assert len(set(ids)) == 200
    assert not set(ids) & {ex.id for ex in val + test}
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
