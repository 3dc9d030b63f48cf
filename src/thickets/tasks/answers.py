"""Answer extraction and equivalence for the paper's task kinds, safe on adversarial text.

Every extractor looks at a bounded slice of the completion and never runs a regex that can
backtrack over the whole of it. Numbers are exact fractions with a bounded number of digits;
LaTeX answers go through math-verify only after a guard rejects what could blow up in sympy
(nested powers, huge factorials, long digit runs, deep nesting), because a big-integer power
runs in C and no timeout can interrupt it.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from .extract import last_tag

TAIL_CHARS = 4000  # final answers sit at the end; never scan more than this
MAX_DIGITS = 40

# -- numbers (GSM8K) --------------------------------------------------------------------------

_NUM = re.compile(r"-?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s?/\s?\d+)?%?", re.ASCII)
_FRAC = re.compile(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}", re.ASCII)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*", re.IGNORECASE)


def _tail(text: str) -> str:
    return unicodedata.normalize("NFKC", text[-TAIL_CHARS:])


def parse_number(text: str) -> Fraction | None:
    """An exact number from '1,234', '$5.50', '-3', '1/2', '50%', '\\frac{1}{2}'; None if not one."""
    s = unicodedata.normalize("NFKC", text.strip())[:200]
    if m := _FRAC.fullmatch(s.replace("$", "").strip()):
        num, den = m.groups()
        return Fraction(int(num), int(den)) if int(den) != 0 and len(num + den) <= 2 * MAX_DIGITS else None
    s = s.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    percent = s.endswith("%")
    s = s.removesuffix("%")
    if not s or sum(c.isdigit() for c in s) > MAX_DIGITS or not re.fullmatch(r"-?(\d+(\.\d+)?|\.\d+)(/\d+)?", s, re.ASCII):
        return None
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def number_key(value: Fraction) -> str:
    """The vote key of a number: '0.5', '1/2' and '50%' all give '1/2'."""
    return str(value)


def _first_number(segment: str) -> str | None:
    m = _FRAC.search(segment) or _NUM.search(segment)
    return m.group(0).strip() if m else None


def extract_final_number(text: str) -> str | None:
    """GSM8K style: the number after the last '####'; else after the last 'answer is'; else the last number."""
    tail = _tail(text)
    at = tail.rfind("####")
    if at >= 0:
        return _first_number(tail[at + 4: at + 104])
    window = tail[-1000:]
    said = list(_ANSWER_IS.finditer(window))
    if said and (number := _first_number(window[said[-1].end():][:100])):
        return number
    numbers = _NUM.findall(tail)
    return numbers[-1].strip() if numbers else None


# -- LaTeX (MATH-500, OlympiadBench) -----------------------------------------------------------

MAX_LATEX_CHARS = 300
MAX_NESTING = 20


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent or unclosed."""
    tail = text[-TAIL_CHARS:]
    start = max(tail.rfind("\\boxed{"), tail.rfind("\\fbox{"))
    if start < 0:
        return None
    i = tail.index("{", start) + 1
    depth, j = 1, i
    while j < len(tail):
        c = tail[j]
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return tail[i:j].strip()
        j += 1
    return None


_EXPONENT = re.compile(r"(\^|\*\*)\s*")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_SCI = re.compile(r"\d[eE][+-]?\d{4,}")
_LONG_DIGITS = re.compile(r"\d{%d,}" % (MAX_DIGITS + 1))


def _exponent_text(s: str, at: int) -> str:
    """The exponent that starts at `at`: a {...} or (...) group, else one token."""
    if at < len(s) and s[at] in "{(":
        close = "}" if s[at] == "{" else ")"
        depth = 0
        for j in range(at, min(len(s), at + MAX_LATEX_CHARS)):
            depth += (s[j] == s[at]) - (s[j] == close)
            if depth == 0:
                return s[at + 1: j]
        return s[at:]
    m = re.match(r"[\w.]*", s[at:])
    return m.group(0) if m else ""


def latex_is_safe(s: str) -> bool:
    """False for what could make sympy compute without end: nested or huge powers, big factorials."""
    if len(s) > MAX_LATEX_CHARS or _SCI.search(s) or _LONG_DIGITS.search(s):
        return False
    depth = 0
    for c in s:
        depth += (c in "{([") - (c in "})]")
        if depth > MAX_NESTING:
            return False
    for m in _EXPONENT.finditer(s):
        exp = _exponent_text(s, m.end())
        if "^" in exp or "**" in exp or "!" in exp:
            return False
        digits = re.sub(r"\D", "", exp)
        if len(digits) > 4:
            return False
    return all(int(n) <= 1000 for n in _FACTORIAL.findall(s))


def parse_latex(answer: str):
    """math-verify's parse of one answer (a sympy object or a string), or None if unparsable or unsafe."""
    if not answer or not latex_is_safe(answer):
        return None
    from math_verify import parse

    parsed = parse("\\boxed{" + answer + "}", parsing_timeout=1)
    return parsed or None


def latex_key(parsed) -> str:
    """A vote key: math-verify's normal form, so 0.5, 1/2 and \\frac{1}{2} vote together."""
    return str(parsed[0])


def latex_equal(gold, answer) -> bool:
    from math_verify import verify

    try:
        return bool(verify(gold, answer, timeout_seconds=1))
    except Exception:
        return False


# -- multiple choice ---------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def extract_choice(text: str, n_choices: int) -> str | None:
    """The chosen letter: a tagged or boxed answer, 'the answer is (B)', 'Answer: B', or a lone letter."""
    valid = LETTERS[:n_choices]
    letter = rf"\(?\*{{0,2}}([{valid}])\*{{0,2}}\)?"
    tail = _tail(text)[-1000:]
    for inner in (last_tag(tail), last_boxed(tail)):
        if inner is not None and (m := re.fullmatch(rf"\s*{letter}[.):]?(?:\s.*)?", inner, re.DOTALL)):
            return m.group(1)
    found = None
    for m in re.finditer(rf"answer(?:\s+is)?\s*[:：]?\s*{letter}(?![A-Za-z])", tail, re.IGNORECASE):
        if m.group(1).upper() in valid:
            found = m.group(1).upper()
    if found:
        return found
    head = text[:20].strip()
    if m := re.match(rf"{letter}(?:[.):]|\s|$)", head):
        return m.group(1)
    return None


# -- sentence ordering (ROCStories) ------------------------------------------------------------


def extract_order(text: str, n: int) -> tuple[int, ...] | None:
    """A permutation of 1..n: from the last <answer> tag, else the last line that holds one."""
    tail = _tail(text)
    candidates = [last_tag(tail)] + tail.splitlines()[::-1][:50]
    for c in candidates:
        if c is None:
            continue
        numbers = re.findall(r"\d+", c[:200], re.ASCII)
        if len(numbers) == n and sorted(int(x) for x in numbers) == list(range(1, n + 1)):
            return tuple(int(x) for x in numbers)
    return None
