"""Rows from a user's data file: JSONL, JSON, CSV, Parquet, or a folder saved by `datasets`.

Every problem is reported with the file (and line, where the format has lines) and stops
the run before anything is written. Rows come back as plain dicts in file order; a column
mapping renames the user's columns to the names a task expects.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from thickets.disk import sha256_of
from thickets.errors import ThicketsError

FORMATS = ("jsonl", "json", "csv", "parquet", "datasets folder")


def load_rows(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """All rows of a data file as dicts; `split` picks one split of a saved DatasetDict."""
    p = Path(path)
    if not p.exists():
        raise ThicketsError(f"data file {p} does not exist")
    if p.is_dir():
        rows = _datasets_folder(p, split)
    elif split is not None:
        raise ThicketsError(
            f"{p}#{split}: only a folder saved by datasets has splits; {p} is a single file (drop #{split})"
        )
    else:
        suffix = p.suffix.lower()
        readers = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
        if suffix not in readers:
            raise ThicketsError(
                f"data file {p}: unknown format {suffix or '(no suffix)'}; "
                f"use .jsonl, .json, .csv, .parquet or a folder saved by datasets"
            )
        rows = readers[suffix](p)
    if not rows:
        raise ThicketsError(f"data file {p} has no rows")
    return rows


def _jsonl(p: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(_read_text(p).split("\n"), 1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ThicketsError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ThicketsError(f"{p}:{n}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _json(p: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_read_text(p))
    except json.JSONDecodeError as e:
        raise ThicketsError(f"{p}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()) and data:
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise ThicketsError(f"{p}: a JSON object of columns needs columns of equal length, got {sorted(lengths)}")
        keys = list(data)
        return [dict(zip(keys, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise ThicketsError(f"{p}: JSON data must be a list of objects or an object of equal-length columns")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ThicketsError(f"{p}: item {i} of the JSON list is a {type(row).__name__}, not an object")
    return data


def _csv(p: Path) -> list[dict[str, Any]]:
    """CSV cells are strings; a cell holding a JSON list or object (e.g. a list of choices) is decoded."""
    rows: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(_read_text(p), newline=""))
    if reader.fieldnames is None:
        return []
    width = len(reader.fieldnames)
    try:
        for row in reader:
            extra, missing = len(row.get(None, ())), sum(v is None for v in row.values())
            if extra or missing:
                raise ThicketsError(
                    f"{p}:{reader.line_num}: expected {width} cells as in the header, got {width + extra - missing}"
                )
            rows.append({k: _maybe_json(v) for k, v in row.items()})
    except csv.Error as e:
        raise ThicketsError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def _maybe_json(cell: str) -> Any:
    s = cell.strip()
    if s[:1] in "[{" and s[-1:] in "]}":
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            pass
    return cell


def _parquet(p: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ThicketsError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        rows: list[dict[str, Any]] = pq.read_table(p).to_pylist()
        return rows
    except Exception as e:  # pyarrow raises several types for a broken file
        raise ThicketsError(f"{p}: not a readable Parquet file ({e})") from None


def _datasets_folder(p: Path, split: str | None) -> list[dict[str, Any]]:
    if not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise ThicketsError(f"{p} is a folder but not one saved by datasets' save_to_disk")
    try:
        import datasets
    except ImportError:
        raise ThicketsError("reading a saved dataset folder needs datasets: pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise ThicketsError(f"{p}: cannot load the saved dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if "train" in ds:
                split = "train"
            elif len(names) == 1:
                split = names[0]
            else:
                raise ThicketsError(f"{p} holds splits {', '.join(names)}; pick one with {p}#SPLIT")
        if split not in ds:
            raise ThicketsError(f"{p} has no split {split!r}; it has {', '.join(names)}")
        ds = ds[split]
    elif split is not None:
        raise ThicketsError(f"{p} is a single dataset; it has no split {split!r}")
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def _read_text(p: Path) -> str:
    """The file as UTF-8 text (a byte-order mark skipped); another encoding is refused, naming the line."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ThicketsError(f"cannot read data file {p}: {e.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ThicketsError(f"data file {p} is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ThicketsError(
            f"data file {p}:{line} is not UTF-8 text (byte 0x{data[e.start]:02x} cannot be decoded); save it as UTF-8"
        ) from None


def parse_columns(items: Iterable[str]) -> dict[str, str]:
    """`field=column` pairs (what the task calls it = what the file calls it) into a dict."""
    mapping: dict[str, str] = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ThicketsError(f"a column mapping is FIELD=COLUMN, got {item!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def column(row: Mapping[str, Any], names: tuple[str, ...], mapping: Mapping[str, str], where: str) -> Any:
    """The value of the task's field `names[0]`: through the mapping if mapped, else the first alias present."""
    field = names[0]
    if field in mapping:
        if mapping[field] not in row:
            raise ThicketsError(
                f"{where}: no column {mapping[field]!r} (mapped to {field}); columns: {', '.join(sorted(row))}"
            )
        return row[mapping[field]]
    for n in names:
        if n in row:
            return row[n]
    raise ThicketsError(
        f"{where}: no column {' or '.join(map(repr, names))} (map one with --columns "
        f"{field}=COLUMN); columns: {', '.join(sorted(row))}"
    )


def fingerprint(path: str | Path) -> str:
    """sha256 of a data file, or of a folder's files (names and bytes, in sorted order)."""
    p = Path(path)
    if p.is_dir():
        return sha256_of(sorted(f for f in p.rglob("*") if f.is_file()), label=lambda f: str(f.relative_to(p)))
    return sha256_of([p])
