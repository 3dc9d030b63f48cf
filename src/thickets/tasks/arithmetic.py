"""A bounded, exact checker for model-written arithmetic: model output is untrusted, so no eval().

Grammar (everything else is rejected)::

    equation := expr [ "=" ["-"] digits ]     # a trailing "= 16" must be the expression's value
    expr     := term (("+" | "-") term)*
    term     := unary (("*" | "/") unary)*
    unary    := ("-" | "+") unary | atom        # unary signs are allowed: they add no number
    atom     := digits | "(" expr ")"
    digits   := [0-9]+                          # ASCII only; no signs, points or exponents

Whitespace (ASCII) may separate tokens. Every bound is checked before the work it guards:
the length before tokenising, the literal count while tokenising, nesting depth (parentheses
and unary minus) while parsing, and the numerator and denominator of every literal and
intermediate result, so `9**9**9**9`-style bombs and deep nesting fail fast and cheaply.
"""

from __future__ import annotations

from fractions import Fraction

_DIGITS = frozenset("0123456789")
_SPACE = frozenset(" \t\n\r\f\v")
_OPS = frozenset("+-*/()")


class EquationError(ValueError):
    """The text is not an acceptable equation (bad syntax, out of bounds, or division by zero)."""


def _split_claim(text: str) -> tuple[str, int | None]:
    """(expression, the claimed result after '=' or None). Only '= <integer>' may follow the expression;
    the claim is never trusted, only checked against the value."""
    head, eq, tail = text.partition("=")
    if not eq:
        return text, None
    claim = tail.strip(" \t\n\r\f\v")
    digits = claim[1:] if claim.startswith("-") else claim
    if not digits or not set(digits) <= _DIGITS or len(digits) > 20:
        raise EquationError(f"only '= <integer>' may follow the expression, not {tail.strip()[:20]!r}")
    return head, int(claim)


def _tokenize(text: str, max_numbers: int, max_magnitude: int) -> list[str | int]:
    tokens: list[str | int] = []
    max_digits = len(str(max_magnitude))
    i, n, count = 0, len(text), 0
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c in _OPS:
            tokens.append(c)
            i += 1
        elif c in _DIGITS:
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            if j - i > max_digits or (value := int(text[i:j])) > max_magnitude:
                raise EquationError(f"number {text[i:j][:20]} exceeds {max_magnitude}")
            count += 1
            if count > max_numbers:
                raise EquationError(f"more than {max_numbers} numbers")
            tokens.append(value)
            i = j
        else:
            raise EquationError(f"unexpected character {c!r} at {i}")
    return tokens


class _Parser:
    """Recursive descent with an explicit depth budget, so recursion is bounded by max_depth."""

    def __init__(self, tokens: list[str | int], max_depth: int, max_magnitude: int):
        self.tokens, self.pos, self.depth = tokens, 0, 0
        self.max_depth, self.max_magnitude = max_depth, max_magnitude
        self.numbers: list[int] = []

    def peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def check(self, value: Fraction) -> Fraction:
        if abs(value.numerator) > self.max_magnitude or value.denominator > self.max_magnitude:
            raise EquationError(f"intermediate value exceeds {self.max_magnitude}")
        return value

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise EquationError(f"nested deeper than {self.max_depth}")

    def expr(self) -> Fraction:
        value = self.term()
        while (op := self.peek()) in ("+", "-"):
            self.pos += 1
            rhs = self.term()
            value = self.check(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while (op := self.peek()) in ("*", "/"):
            self.pos += 1
            rhs = self.unary()
            if op == "*":
                value = self.check(value * rhs)
            elif rhs == 0:
                raise EquationError("division by zero")
            else:
                value = self.check(value / rhs)
        return value

    def unary(self) -> Fraction:
        tok = self.peek()
        if tok in ("-", "+"):
            self.pos += 1
            self.enter()
            value = -self.unary() if tok == "-" else self.unary()
            self.depth -= 1
            return value
        if tok == "(":
            self.pos += 1
            self.enter()
            value = self.expr()
            if self.peek() != ")":
                raise EquationError("missing ')'")
            self.pos += 1
            self.depth -= 1
            return value
        if isinstance(tok, int):
            self.pos += 1
            self.numbers.append(tok)
            return Fraction(tok)
        raise EquationError("unexpected end" if tok is None else f"unexpected {tok!r}")


def evaluate_equation(
    text: str, *, max_length: int = 200, max_depth: int = 20, max_numbers: int = 10, max_magnitude: int = 10**12
) -> tuple[Fraction, list[int]]:
    """The exact value of `text` and its integer literals in order; EquationError if it is not acceptable."""
    if len(text) > max_length:
        raise EquationError(f"longer than {max_length} characters")
    expression, claim = _split_claim(text)
    tokens = _tokenize(expression, max_numbers, max_magnitude)
    parser = _Parser(tokens, max_depth, max_magnitude)
    try:
        value = parser.expr()
    except RecursionError:  # only reachable if a caller raises max_depth past Python's limit
        raise EquationError("nested too deeply") from None
    if parser.pos != len(tokens):
        raise EquationError(f"unexpected {tokens[parser.pos]!r}")
    if claim is not None and claim != value:
        raise EquationError(f"the equation claims {claim} but its value is {value}")
    return value, parser.numbers
