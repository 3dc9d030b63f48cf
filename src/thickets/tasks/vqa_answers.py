"""Short answers to visual questions, normalised as the VQA and GQA evaluations normalise them, so that a
vote key and a verdict agree with the numbers papers report (issue 28's `vqa` kind builds on this).

The VQA evaluation (Antol et al., its official script) lower-cases an answer, drops punctuation (a
period or comma inside a number stays: "2.5", "1,000" -> "1000"), writes number words as digits,
drops the articles a, an and the, and restores common contractions; GQA compares exact answers after
the same cleaning. With several human answers (VQA has ten), an answer scores min(matches / 3, 1); with
one or two accepted answers it scores 1 when it matches any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBERS = {
    w: str(i)
    for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "dont": "don't",
    "doesnt": "doesn't",
    "isnt": "isn't",
    "arent": "aren't",
    "cant": "can't",
    "wont": "won't",
    "didnt": "didn't",
    "wasnt": "wasn't",
    "werent": "weren't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "shouldnt": "shouldn't",
    "couldnt": "couldn't",
    "wouldnt": "wouldn't",
    "im": "i'm",
    "ive": "i've",
    "youre": "you're",
    "theyre": "they're",
    "thats": "that's",
    "whats": "what's",
}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
# the official script's patterns, as written there: a period not followed by a digit goes
_PERIOD_NOT_DECIMAL = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!]")
MAX_ANSWER_CHARS = 200


def vqa_normal_form(text: str) -> str:
    """The VQA evaluation's normal form of a short answer (empty for an answer with no words)."""
    text = " ".join(text[:MAX_ANSWER_CHARS].lower().split())
    text = _DIGIT_COMMA.sub("", text)
    text = _PERIOD_NOT_DECIMAL.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(answer: str, accepted: Sequence[str]) -> float:
    """An answer's score against the accepted answers: min(matches / 3, 1) against three or more (VQA's
    annotators), else 1 for a match with any; 0 for an answer that normalises to nothing."""
    mine = vqa_normal_form(answer)
    if not mine or not accepted:
        return 0.0
    matches = sum(vqa_normal_form(a) == mine for a in accepted)
    if len(accepted) >= 3:
        return min(matches / 3, 1.0)
    return 1.0 if matches else 0.0
