"""Writes word_problems.jsonl: small GSM8K-style problems (question, answer "#### N") for the examples."""

import json
import random

TEMPLATES = [
    ("Tom has {a} apples and buys {b} more. How many apples does he have now?", lambda a, b: a + b),
    ("A shelf holds {a} books. {b} books are taken away. How many books are left?", lambda a, b: a - b),
    ("There are {a} boxes with {b} pens in each box. How many pens are there?", lambda a, b: a * b),
    ("Sara reads {a} pages on Monday and {b} pages on Tuesday. How many pages did she read?", lambda a, b: a + b),
]

rng = random.Random(0)
with open("word_problems.jsonl", "w") as f:
    for i in range(400):
        text, fn = TEMPLATES[i % len(TEMPLATES)]
        a, b = rng.randint(2, 20), rng.randint(2, 9)
        a = max(a, b + 1)
        f.write(json.dumps({"id": i, "question": text.format(a=a, b=b), "answer": f"#### {fn(a, b)}"}) + "\n")
