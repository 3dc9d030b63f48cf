"""Visual questions from a data file (`--task vqa:PATH`): a question, one image, and an answer or a list of
accepted answers; answers normalised and scored as the VQA and GQA evaluations do (vqa_answers.py).

The image of a row is a path (relative to the data file's folder, or absolute), its bytes, or a
`datasets` Image value ({"bytes", "path"}). Every image is opened and checked when the task is made, so
a missing or unreadable one, or a row with several, is one line and exit 2 before anything is written.
The image's content hash is part of the example, so a changed image is a changed example.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.base import Example, Score, duplicate_text
from thickets.tasks.extract import MAX_ANSWER_CHARS, last_tag
from thickets.tasks.files.rows import RowTask
from thickets.tasks.vqa_answers import vqa_normal_form, vqa_score

#: the largest image file a row may hold (decoded images are bounded by the processor)
MAX_IMAGE_BYTES = 64 << 20


def _image_bytes(value: Any, folder: Path, where: str) -> bytes:
    """The bytes of a row's one image, whatever form the row gives it in."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ThicketsError(f"{where}: {len(value)} images in one row; a vqa row has exactly one")
        value = value[0]
    if isinstance(value, dict):  # a datasets Image column
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str) and value.strip():
        if "://" in value:
            raise ThicketsError(f"{where}: image {value[:80]!r} is a URL; thickets reads local files only")
        path = Path(value) if Path(value).is_absolute() else folder / value
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise ThicketsError(f"{where}: image {path} is over {MAX_IMAGE_BYTES >> 20} MiB")
            data = path.read_bytes()
        except OSError as e:
            raise ThicketsError(f"{where}: cannot read image {path}: {e.strerror or e}") from None
    else:
        raise ThicketsError(f"{where}: the image must be a path, bytes or an Image value, got {value!r:.60}")
    if (problem := unreadable(data)) is not None:
        raise ThicketsError(f"{where}: the image is not one PIL can read ({problem})")
    return data


def unreadable(data: bytes) -> str | None:
    """Why PIL cannot read an encoded image (the error's name), or None when it can: the one check a data
    file's images and a served request's image both pass."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return type(e).__name__
    return None


def answer_of(completion: str) -> str | None:
    """A short answer: the last <answer> tag, else the first non-blank line of the completion."""
    answer = last_tag(completion)
    if answer is None:
        lines = [line.strip() for line in completion[:MAX_ANSWER_CHARS].splitlines() if line.strip()]
        answer = lines[0] if lines else None
    return answer


class VQATask(RowTask):
    kind = "vqa"
    kind_description = "a question about one image; short answers normalised and scored as VQA and GQA do"
    images = True
    _PROMPT = "{question}\nAnswer the question using a single word or phrase."

    def fields(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        question = self.get(row, where, "question", "prompt", "query")
        if not isinstance(question, str) or not question.strip():
            raise ThicketsError(f"{where}: the question must be non-empty text, got {question!r:.60}")
        image = _image_bytes(self.get(row, where, "image", "images", "image_path"), self._folder(), where)
        answers = self.get(row, where, "answers", "answer", "label")
        answers = [answers] if isinstance(answers, (str, int, float)) else answers
        if not isinstance(answers, list) or not answers:
            raise ThicketsError(f"{where}: give the answer, or a list of accepted answers, got {answers!r:.60}")
        texts = [a["answer"] if isinstance(a, dict) and "answer" in a else a for a in answers]  # VQA's answer dicts
        if any(not str(t).strip() for t in texts):
            raise ThicketsError(f"{where}: an accepted answer is blank")
        return {
            "question": question,
            "answers": [str(t) for t in texts],
            "image_sha256": hashlib.sha256(image).hexdigest(),
            "image": image,
        }

    def _folder(self) -> Path:
        return Path(self.source.partition("#")[0]).parent

    def prompt(self, fields: dict[str, Any]) -> str:
        return self._PROMPT.format(question=fields["question"])

    def duplicate_key(self, example: Example) -> str:
        """One question about one image: the same words about another picture are another question."""
        return f"{duplicate_text(example.prompt)}|{example.data['image_sha256']}"

    def image_of(self, example: Example) -> bytes | None:
        image: bytes = example.data["image"]
        return image

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        answer = answer_of(completion)
        key = vqa_normal_form(answer) if answer else ""
        return (answer, key) if key else (answer, None)

    def score(self, example: Example, completion: str) -> Score:
        answer, key = self.extract(completion)
        if answer is None or key is None:
            return Score(answer, None, 0.0, False)
        reward = vqa_score(answer, example.data["answers"])
        return Score(answer, key, reward, reward >= 1.0)
