"""Answer extraction and equivalence for the paper's task kinds, safe on adversarial text.

Every extractor looks at a bounded slice of the completion and never runs a regex that can
backtrack over the whole of it. Numbers are exact fractions with a bounded number of digits;
LaTeX answers go through math-verify only after a guard rejects what could blow up in sympy
(nested powers, huge factorials, long digit runs, deep nesting), because a big-integer power
runs in C and no timeout can interrupt it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from fractions import Fraction
from typing import Any

from thickets.tasks.extract import last_tag

TAIL_CHARS = 4000  # final answers sit at the end; never scan more than this
MAX_DIGITS = 40

# -- numbers (GSM8K) --------------------------------------------------------------------------

# A sign counts only where it cannot be an operator or a range dash (not right after a digit, a
# letter or a closing bracket); thousands groups are exactly three digits, and a digit run that
# goes on after a group ("1,2345") is not a number at all.
_NUM = re.compile(
    r"(?<![0-9A-Za-z)\]])-?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+(?:,\d+)+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?\d+)?%?",
    re.ASCII,
)
_FRAC = re.compile(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}", re.ASCII)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b|:)\s*", re.IGNORECASE)
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})*", re.ASCII)
#: minus signs and dashes models write for a minus: U+2212 minus, U+2010/2011 hyphens, U+2012 figure
#: dash, U+2013 en dash, U+FE63 and U+FF0D (NFKC maps the last two, not the others)
_MINUS = str.maketrans(dict.fromkeys("−‐‑‒–﹣－", "-"))


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_MINUS)


def _tail(text: str) -> str:
    return _normal(text[-TAIL_CHARS:])


def parse_number(text: str) -> Fraction | None:
    """An exact number from '1,234', '$5.50', '-3', '1/2', '50%', '\\frac{1}{2}'; None if not one.

    A percent sign is a unit, as GSM8K writes it: '50%' is 50 (GSM8K's golds for "what percent"
    questions are bare numbers; `is_percent` lets a scorer also accept the fraction). Commas must
    group thousands: '1,2345' is not a number.
    """
    s = _normal(text.strip()[:200])
    if m := _FRAC.fullmatch(s.replace("$", "").strip()):
        num, den = m.groups()
        return Fraction(int(num), int(den)) if int(den) != 0 and len(num + den) <= 2 * MAX_DIGITS else None
    s = s.replace("$", "").replace(" ", "").rstrip(".").removesuffix("%")
    if "," in s:
        whole = s.lstrip("-").split(".")[0].split("/")[0]
        if not _GROUPED.fullmatch(whole):
            return None
        s = s.replace(",", "")
    if (
        not s
        or sum(c.isdigit() for c in s) > MAX_DIGITS
        or not re.fullmatch(r"-?(\d+(\.\d+)?|\.\d+)(/\d+)?", s, re.ASCII)
    ):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def is_percent(text: str) -> bool:
    return text.strip().rstrip(".").endswith("%")


def number_key(value: Fraction) -> str:
    """The vote key of a number: '0.5', '1/2' and '\\frac{1}{2}' all give '1/2'."""
    return str(value)


def _first_number(segment: str) -> str | None:
    m = _FRAC.search(segment) or _NUM.search(segment)
    return m.group(0).strip() if m else None


def extract_final_number(text: str) -> str | None:
    """GSM8K style: the number after the last '####'; else after the last 'answer is'; else the last number."""
    tail = _tail(text)
    at = tail.rfind("####")
    if at >= 0:
        return _first_number(tail[at + 4 : at + 104])
    window = tail[-1000:]
    said = list(_ANSWER_IS.finditer(window))
    if said and (number := _first_number(window[said[-1].end() :][:100])):
        return number
    numbers = _NUM.findall(tail)
    return numbers[-1].strip() if numbers else None


# -- LaTeX (MATH-500, OlympiadBench) -----------------------------------------------------------

MAX_LATEX_CHARS = 300
MAX_NESTING = 20


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced, or of `\\boxed 5` (one token,
    no braces); None if absent or unclosed."""
    tail = text[-TAIL_CHARS:]
    start = max(tail.rfind("\\boxed"), tail.rfind("\\fbox"))
    if start < 0:
        return None
    rest = tail[start + (6 if tail.startswith("\\boxed", start) else 5) :]
    if rest.startswith(" ") or (rest[:1] and rest[:1] not in "{" and not rest[:1].isalpha()):
        m = re.match(r"\s*([^\s$]+)", rest)  # \boxed 5 and \boxed5: up to a space or the closing $
        return m.group(1).rstrip(".,") if m else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for j, c in enumerate(rest):
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return rest[1:j].strip()
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
                return s[at + 1 : j]
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


def parse_latex(answer: str) -> list[Any] | None:
    """math-verify's parse of a reference answer (trusted text from the user's data), or None if
    unparsable or unsafe. Model answers never go through this: they are parsed in the scorer sandbox.

    Without math-verify's timeout: it is a wall clock (SIGALRM), so a busy machine or a cold first
    parse refused good references; the guard above is what bounds the work."""
    if not answer or not latex_is_safe(answer):
        return None
    from math_verify import parse

    logging.getLogger("math_verify.parser").addFilter(_timeout_off)  # once: the same filter is not added twice
    parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    return parsed or None


def _timeout_off(record: logging.LogRecord) -> bool:
    """Drop math-verify's warning that its timeout is off: off on purpose (parse_latex)."""
    return not record.getMessage().startswith("Timeout is disabled")


# -- multiple choice ---------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def extract_choice(text: str, n_choices: int) -> str | None:
    """The chosen letter: a tagged or boxed answer, 'the answer is (B)', 'Answer: B', a leading 'B.' or
    '(B)', or a lone letter; else the last '(B)'.

    Letters are capitals: a lowercase letter, and the pronoun-like capital I, count only where they
    cannot be a word: in brackets or bold, or followed by '.', ')', ':', ',' or the end of the text.
    A leading letter counts only as 'B.', 'B)', '(B)' or alone. So "The answer is a bit unclear",
    "The answer is I think (B)", "I cannot tell" and "A careful look shows (B)" do not choose A or I.
    """
    valid = LETTERS[:n_choices]
    tail = _tail(text)[-1000:]

    def choice(letter: str, wrapped: bool, after: str) -> str | None:
        up = letter.upper()
        if up not in valid:
            return None
        if wrapped or (letter.isupper() and letter != "I"):
            return up
        return up if after[:1] in ("", ".", ")", ":", ",", "!", ";") else None

    for inner in (last_tag(tail), last_boxed(tail)):
        m = re.fullmatch(r"\s*\(?\*{0,2}([A-Za-z])\*{0,2}\)?[.):]?(?:\s.*)?", inner or "", re.DOTALL)
        if m and (letter := m.group(1).upper()) in valid:
            return letter
    found = None
    for m in re.finditer(r"(?i:answer)(?:\s+(?i:is))?\s*[:：]?\s*(\(|\*\*)?([A-Za-z])(\)|\*\*)?(?![A-Za-z])", tail):
        wrapped = bool(m.group(1) and m.group(3))
        found = choice(m.group(2), wrapped, tail[m.end() :].lstrip(" ")[:1] if not wrapped else "") or found
    if found:
        return found
    head = _normal(text[:40]).strip()
    if m := re.match(r"(\()?([A-Za-z])(\))?", head):
        rest = head[m.end() :]
        wrapped = bool(m.group(1) and m.group(3))
        delimited = wrapped or (m.group(3) and not m.group(1)) or rest[:1] in (".", ":") or rest.strip() == ""
        letter = m.group(2)
        if delimited and (letter.isupper() or not rest.strip() or wrapped) and letter.upper() in valid:
            return letter.upper()
    bracketed = [m.group(1) for m in re.finditer(r"\(([A-Z])\)", tail) if m.group(1) in valid]
    return bracketed[-1] if bracketed else None


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
