"""Answer extraction that stays linear on adversarial text (no backtracking regex over the whole output)."""

from __future__ import annotations

import re

MAX_ANSWER_CHARS = 1000


def last_tag(text: str, tag: str = "answer", max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last complete <tag>...</tag>, stripped; None if absent or overlong."""
    close = f"</{tag}>"
    end = text.rfind(close)
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    content = text[start + len(tag) + 2 : end].strip()
    return content if len(content) <= max_chars else None


_WS = re.compile(r"\s+")


def normalise(answer: str) -> str:
    """A vote key for free-text answers: case and whitespace do not split votes."""
    return _WS.sub(" ", answer.strip()).casefold()
