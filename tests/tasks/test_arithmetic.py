"""The equation checker: exact on good input, a fast EquationError on anything else."""

from __future__ import annotations

from fractions import Fraction

import pytest

from thickets.tasks.arithmetic import EquationError, evaluate_equation

pytestmark = pytest.mark.timeout(120)  # a hang guard: adversarial input must not make it hang


def _fast(fn, *args, **kwargs):
    """A call that must return (within the module's hang guard) however hostile the text."""
    return fn(*args, **kwargs)


@pytest.mark.parametrize(
    "text, value, numbers",
    [
        ("1 + 2", 3, [1, 2]),
        ("(3+5)*2", 16, [3, 5, 2]),
        ("(3+5)*2 = 16", 16, [3, 5, 2]),
        ("+3*5+7", 22, [3, 5, 7]),  # a leading unary plus, as some models write it
        ("10 - 2 - 3", 5, [10, 2, 3]),  # left associative
        ("24 / 4 / 2", 3, [24, 4, 2]),
        ("2 + 3 * 4", 14, [2, 3, 4]),
        ("7 / 2", Fraction(7, 2), [7, 2]),  # exact, no float rounding
        ("(1 / 3) * 3", 1, [1, 3, 3]),
        ("-(1 - 2) * 3", 3, [1, 2, 3]),  # unary minus allowed
        ("2 * -3", -6, [2, 3]),
        (" \t( ( 4 ) )\n", 4, [4]),
    ],
)
def test_valid(text, value, numbers):
    assert _fast(evaluate_equation, text) == (Fraction(value), numbers)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "()",
        "1 +",
        "(1 + 2",
        "1 + 2)",
        "(3+5)*2 = 17",
        "3*5-2 = 12",
        "1 = -1",
        "2 (3)",
        "1 2",
        "9**9**9**9",
        "2**10",
        "2^100",
        "7 % 3",
        "7 // 2",
        "1.5 + 2",
        "1e9",
        ".5",
        "__import__('os')",
        "x + 1",
        "abs(3)",
        "pow(9, 9)",
        "'1' + '2'",
        "[1] + 2",
        "{1}",
        "1 + True",
        "\u0663 + 1",
        "\uff13 + 1",
        "1\u00a0+ 2",
        "1 \u00d7 2",
        "1 = 2 = 3",
        "1 + 2 = x",
        "1 == 1",
        "1 = 2.0",
        "1 / 0",
        "1 / (2 - 2)",
        "5 / (3 - 3) * 0",
    ],
)
def test_rejected(text):
    with pytest.raises(EquationError):
        _fast(evaluate_equation, text)


def test_bounds():
    with pytest.raises(EquationError, match="longer"):
        _fast(evaluate_equation, "1+" * 500_000 + "1")
    with pytest.raises(EquationError, match="longer"):
        _fast(evaluate_equation, "(" * 10**6)
    nested = "(" * 100_000 + "1" + ")" * 100_000
    with pytest.raises(EquationError, match="longer"):
        _fast(evaluate_equation, nested)
    # depth is bounded during parsing too, even when the length limit allows deep nesting
    with pytest.raises(EquationError, match="deeper"):
        _fast(evaluate_equation, nested, max_length=10**6)
    with pytest.raises(EquationError, match="deeper"):
        _fast(evaluate_equation, "-" * 100_000 + "1", max_length=10**6)
    assert evaluate_equation("(" * 20 + "1" + ")" * 20)[0] == 1
    with pytest.raises(EquationError, match="deeper"):
        evaluate_equation("(" * 21 + "1" + ")" * 21)


def test_magnitude_and_count():
    with pytest.raises(EquationError, match="exceeds"):
        _fast(evaluate_equation, "*".join(["99999"] * 8))
    with pytest.raises(EquationError, match="exceeds"):
        _fast(evaluate_equation, "1 / 99999 / 99999 / 99999")  # denominators are bounded too
    with pytest.raises(EquationError, match="exceeds"):
        _fast(evaluate_equation, "9" * 100_000, max_length=10**6)  # no huge int() conversion
    with pytest.raises(EquationError, match="more than"):
        _fast(evaluate_equation, "+".join(["1"] * 11))
    assert evaluate_equation("+".join(["1"] * 10))[0] == 10
    assert evaluate_equation("1000000 * 1000000")[0] == 10**12
