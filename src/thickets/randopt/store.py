"""The run folder and its SQLite database: the single source of truth of a run.

One process writes (an exclusive lock file guards the folder). Each candidate goes in with
all of its per-example results in one transaction, so a killed run loses at most the
candidate in flight and never records one twice. The config is written when the folder is
created and compared on every later open; a different config is refused before any write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from thickets.disk import write_whole
from thickets.errors import ThicketsError
from thickets.randopt.config import SearchConfig
from thickets.tasks.base import Score, ScoredExample
from thickets.tasks.multi import task_of

DB_NAME = "thickets.sqlite"
BASE = "base"
CALIBRATION_FILE = "calibration.json"  # the pilot of a run with --sigma auto: its curve and its choice

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    idx INTEGER PRIMARY KEY,
    seed INTEGER NOT NULL UNIQUE,
    sigma REAL NOT NULL,
    score REAL NOT NULL,          -- mean reward on the validation split
    accuracy REAL NOT NULL,       -- fraction correct on the validation split
    format_rate REAL NOT NULL,    -- fraction of answers that could be extracted
    seconds REAL NOT NULL,
    n_val INTEGER,                -- validation examples scored (fewer than val_size: racing stopped it)
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,          -- 'base' or 'cand:<idx>'
    split TEXT NOT NULL,          -- 'val' or 'test'
    example INTEGER NOT NULL,     -- position in the split
    example_id TEXT NOT NULL,
    completion TEXT NOT NULL,
    answer TEXT,
    vote_key TEXT,
    reward REAL NOT NULL,
    correct INTEGER NOT NULL,
    unscored INTEGER NOT NULL DEFAULT 0,  -- 1: the scorer failed twice, no verdict (0 in runs made before it)
    PRIMARY KEY (model, split, example)
);
"""


def candidate_model(idx: int) -> str:
    return f"cand:{idx}"


@dataclass(frozen=True)
class Candidate:
    idx: int
    seed: int
    sigma: float
    score: float  # over the examples scored: all of validation unless racing stopped it early
    accuracy: float
    format_rate: float
    seconds: float
    complete: bool = True  # False: racing stopped it; it cannot be among the top K


@dataclass(frozen=True)
class Summary:
    """Mean reward, accuracy and extractable fraction over some examples: over those with a verdict,
    so a scorer that failed (an unscored row) counts neither for nor against a model."""

    n: int
    score: float
    accuracy: float
    format_rate: float
    unscored: int = 0  # rows of the n without a verdict, left out of the means

    @classmethod
    def of(cls, scores: Sequence[Score]) -> Summary:
        judged = [s for s in scores if not s.unscored]
        m = len(judged)
        if m == 0:
            return cls(len(scores), 0.0, 0.0, 0.0, len(scores))
        return cls(
            len(scores),
            sum(s.reward for s in judged) / m,
            sum(s.correct for s in judged) / m,
            sum(s.extracted for s in judged) / m,
            len(scores) - m,
        )


def _db_uri(run_dir: Path, mode: str) -> str:
    """An SQLite URI for the run's database. The path is percent-encoded: a folder named `exp#1` or
    `%41` is that folder, never `exp` (a bare '#' or '%' in a URI starts a fragment or an escape)."""
    return f"file:{urllib.parse.quote(str(Path(run_dir).absolute() / DB_NAME))}?mode={mode}"


def _check_folder(run_dir: Path) -> Path | None:
    """The database path of an existing run folder, None where there is no run; a folder that cannot
    hold one is refused in one line."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ThicketsError(f"run folder {run_dir} is a file, not a folder; choose another --run-dir")
    db = run_dir / DB_NAME
    if db.exists() and not db.is_file():
        raise ThicketsError(f"{db} is not a file; {run_dir} is not a thickets run folder")
    if not db.exists():
        return None
    if not os.access(db, os.R_OK):
        raise ThicketsError(f"{db} is not readable")
    return db


def _connect(run_dir: Path, writable: bool) -> sqlite3.Connection:
    """Open the database. Read-write whenever the file allows it, even just to read: a run killed inside
    a commit leaves a hot journal, which only a connection that may write rolls back, and a read-only
    connection would refuse the intact run. A read-only file with a hot journal is refused by SQLite."""
    modes = ["rw"] if writable else ["rw", "ro"]
    error: sqlite3.Error | None = None
    for mode in modes:
        try:
            con = sqlite3.connect(_db_uri(run_dir, mode), uri=True, isolation_level=None)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls a hot journal back
            return con
        except sqlite3.Error as e:
            error = e
    raise store_error(run_dir, error)


def store_error(run_dir: Path, e: BaseException | None) -> ThicketsError:
    """One line for what SQLite or the file system said about a run's database."""
    text = str(e)
    if isinstance(e, sqlite3.Error) and ("full" in text or "disk I/O" in text):
        return ThicketsError(
            f"cannot write the run store in {run_dir}: {text} (free space and run the same command "
            f"again: finished candidates are kept)"
        )
    if isinstance(e, sqlite3.Error) and "readonly" in text.replace("-", "").replace(" ", ""):
        return ThicketsError(f"run folder {run_dir} is read-only ({text}); make it writable or copy it")
    if isinstance(e, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return ThicketsError(f"{Path(run_dir) / DB_NAME} is damaged ({text}); restore it from a copy")
    return ThicketsError(f"{Path(run_dir) / DB_NAME} is not a usable thickets run database: {text}")


def read_config(run_dir: Path) -> SearchConfig | None:
    """The config of an existing run folder, read without changing anything; None if there is no run."""
    if _check_folder(Path(run_dir)) is None:
        return None
    con = _connect(Path(run_dir), writable=False)
    try:
        row = con.execute("SELECT value FROM meta WHERE key='config'").fetchone()
    except sqlite3.Error as e:
        raise store_error(run_dir, e) from None
    finally:
        con.close()
    if row is None:
        raise ThicketsError(f"{Path(run_dir) / DB_NAME} has no config; it is not a thickets run folder")
    try:
        return SearchConfig.from_dict(json.loads(row[0]))
    except (ValueError, TypeError) as e:
        raise ThicketsError(f"{Path(run_dir) / DB_NAME} holds an unreadable config: {e}") from None


def check_compatible(run_dir: Path, config: SearchConfig) -> SearchConfig | None:
    """Refuse (before any write) a config that differs from the run folder's in a field that matters."""
    old = read_config(run_dir)
    if old is not None:
        diff = old.differences(config)
        if diff:
            detail = "; ".join(f"{k}: {_shown(old, k)} in the run, {_shown(config, k)} now" for k in diff)
            raise ThicketsError(f"run folder {run_dir} holds a run with another config ({detail}); use a new --run-dir")
        config.resuming(old)
    return old


def _shown(config: SearchConfig, key: str) -> str:
    return "'auto'" if key == "sigmas" and config.auto else repr(getattr(config, key))


class RunStore:
    """Open with RunStore.open(); use as a context manager so the lock is released."""

    def __init__(self, run_dir: Path, con: sqlite3.Connection, lock_fd: int | None):
        self.run_dir = run_dir
        self.con = con
        self._lock_fd = lock_fd

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        config: SearchConfig | None = None,
        meta: dict[str, Any] | None = None,
        write: bool = True,
    ) -> RunStore:
        """Open a run folder; with `config`, create it or check it matches. Takes the writer lock.

        Everything that can be refused is refused before the first write: a folder that is a file,
        a damaged database (SQLite's quick check), a folder or database that cannot be written (a
        temporary file in the folder and a write transaction prove it)."""
        run_dir = Path(run_dir)
        if config is not None:
            check_compatible(run_dir, config)
        elif read_config(run_dir) is None:
            raise ThicketsError(f"no thickets run in {run_dir} (run `thickets search` first)")
        lock_fd = None
        if write:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                lock_fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
                tempfile.TemporaryFile(dir=run_dir).close()  # SQLite's journal must be creatable here
            except OSError as e:
                if lock_fd is not None:
                    os.close(lock_fd)
                raise ThicketsError(f"cannot write in run folder {run_dir}: {e.strerror}") from None
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise ThicketsError(f"run folder {run_dir} is in use by another thickets process") from None
        try:
            con = (
                _connect(run_dir, writable=write)
                if (run_dir / DB_NAME).exists()
                else sqlite3.connect(_db_uri(run_dir, "rwc"), uri=True, isolation_level=None)
            )
        except (ThicketsError, sqlite3.Error) as e:
            if lock_fd is not None:
                os.close(lock_fd)
            raise e if isinstance(e, ThicketsError) else store_error(run_dir, e) from None
        store = cls(run_dir, con, lock_fd)
        try:
            store._check_integrity()
            if write:
                con.execute("PRAGMA synchronous=FULL")
                with store.transaction():
                    for statement in SCHEMA.split(";"):  # executescript() would commit on its own
                        if statement.strip():
                            con.execute(statement)
                    columns = {r[1] for r in con.execute("PRAGMA table_info(candidates)")}
                    if "n_val" not in columns:  # a run folder from before racing: every candidate is complete
                        con.execute("ALTER TABLE candidates ADD COLUMN n_val INTEGER")
                    if config is not None:
                        store._write_config(config)
                    for k, v in (meta or {}).items():
                        con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (k, json.dumps(v)))  # as first recorded
        except BaseException:
            store.close()
            raise
        return store

    def _check_integrity(self) -> None:
        """SQLite's quick check over every page, so damage deep in the file stops a command before it
        generates anything rather than when it reaches the page."""
        try:
            rows = self.con.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as e:
            raise store_error(self.run_dir, e) from None
        if rows != [("ok",)]:
            found = " ".join(" ".join(str(r[0]) for r in rows[:3]).split())
            raise ThicketsError(f"{self.run_dir / DB_NAME} is damaged ({found}); restore it from a copy")

    def close(self) -> None:
        self.con.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction. SQLite may already have rolled back on its own (a full disk): then
        there is nothing to roll back, and the error reaches the user as one line."""
        con = self.con
        try:
            con.execute("BEGIN IMMEDIATE")
            yield
            con.execute("COMMIT")
        except sqlite3.Error as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise store_error(self.run_dir, e) from None
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------------------------

    @property
    def config(self) -> SearchConfig:
        return SearchConfig.from_dict(self.meta("config"))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def calibration(self) -> dict[str, Any] | None:
        """The pilot's record (curve and choice) of a run with --sigma auto once its pilot is done; else None."""
        record: dict[str, Any] | None = self.meta("calibration")
        return record

    def done_indices(self) -> set[int]:
        return {r[0] for r in self.con.execute("SELECT idx FROM candidates")}

    def candidates(self) -> list[Candidate]:
        columns = {r[1] for r in self.con.execute("PRAGMA table_info(candidates)")}
        n_val = "n_val" if "n_val" in columns else "NULL"  # read-only opens of old folders
        rows: list[tuple[int, int, float, float, float, float, float, int | None]] = self.con.execute(
            f"SELECT idx, seed, sigma, score, accuracy, format_rate, seconds, {n_val} FROM candidates ORDER BY idx"
        ).fetchall()
        val_size = self.config.val_size
        return [Candidate(*r[:7], complete=r[7] is None or r[7] >= val_size) for r in rows]

    def scores(self, model: str, split: str) -> dict[int, Score]:
        """Stored per-example scores of one model on one split, by example position."""
        rows = self.con.execute(
            f"SELECT example, answer, vote_key, reward, correct, {self._unscored_column()} FROM results "
            "WHERE model=? AND split=?",
            (model, split),
        )
        return {
            ex: Score(answer, key, reward, bool(correct), bool(unscored))
            for ex, answer, key, reward, correct, unscored in rows
        }

    def _unscored_column(self) -> str:
        """The results' unscored column, or 0 in a read-only open of a folder made before it existed."""
        return "unscored" if "unscored" in {r[1] for r in self.con.execute("PRAGMA table_info(results)")} else "0"

    def unscored(self) -> dict[str, int]:
        """Rows without a verdict (the scorer failed twice), per split; empty when every row has one."""
        rows = self.con.execute(
            f"SELECT split, count(*) FROM results WHERE {self._unscored_column()} != 0 GROUP BY split"
        )
        return dict(rows.fetchall())

    def example_ids(self, split: str, model: str | None = None) -> dict[int, str]:
        """The id of every stored example position of a split (of one model's results, or any model's)."""
        if model is None:
            rows = self.con.execute("SELECT DISTINCT example, example_id FROM results WHERE split=?", (split,))
        else:
            rows = self.con.execute("SELECT example, example_id FROM results WHERE split=? AND model=?", (split, model))
        return dict(rows.fetchall())

    def val_reward_by_task(self) -> dict[str, dict[str, float]]:
        """Mean validation reward of every model (base and candidates) on each task of a multi-task run,
        {model: {task: mean}}, in one pass over the stored results."""
        sums: dict[str, dict[str, list[float]]] = {}
        rows = self.con.execute(
            f"SELECT model, example_id, reward FROM results WHERE split='val' AND {self._unscored_column()} = 0"
        )
        for model, ex_id, reward in rows:
            sums.setdefault(model, {}).setdefault(task_of(ex_id), []).append(reward)
        return {m: {t: sum(v) / len(v) for t, v in per.items()} for m, per in sums.items()}

    def completions(self, model: str, split: str) -> dict[int, str]:
        rows = self.con.execute("SELECT example, completion FROM results WHERE model=? AND split=?", (model, split))
        return dict(rows.fetchall())

    # -- writing -------------------------------------------------------------------------------

    def _insert_results(self, model: str, split: str, rows: Iterable[ScoredExample]) -> None:
        if self._unscored_column() == "0":  # an older folder gains the column with its first new rows, not on open
            self.con.execute("ALTER TABLE results ADD COLUMN unscored INTEGER NOT NULL DEFAULT 0")
        self.con.executemany(
            "INSERT INTO results (model, split, example, example_id, completion, answer, vote_key, reward, correct,"
            " unscored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    model,
                    split,
                    pos,
                    ex.id,
                    c,
                    s.answer,
                    s.vote_key,
                    float(s.reward),
                    int(bool(s.correct)),
                    int(s.unscored),
                )
                for pos, ex, c, s in rows
            ],
        )

    def add_candidate(
        self, idx: int, seed: int, sigma: float, rows: Sequence[ScoredExample], seconds: float
    ) -> Candidate:
        """One candidate and its validation results (all, or those scored before racing stopped it), atomically."""
        summary = Summary.of([r.score for r in rows])
        with self.transaction():
            self._insert_results(candidate_model(idx), "val", rows)
            self.con.execute(
                "INSERT INTO candidates (idx, seed, sigma, score, accuracy, format_rate, seconds, n_val) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (idx, seed, sigma, summary.score, summary.accuracy, summary.format_rate, seconds, len(rows)),
            )
        return Candidate(
            idx,
            seed,
            sigma,
            summary.score,
            summary.accuracy,
            summary.format_rate,
            seconds,
            complete=len(rows) >= self.config.val_size,
        )

    def keep_first(self, count: int) -> None:
        """Drop every candidate from index `count` on, with its results: the run as it stood after `count`,
        its config's population included (a search of the folder then adds nothing)."""
        config = replace(self.config, population=count)
        undone = config.auto and config.calibrated and count < config.pilot_size
        with self.transaction():
            if undone:  # the pilot loses candidates: its choice no longer stands
                config = config.starting()
                self.con.execute("DELETE FROM meta WHERE key='calibration'")
            self._write_config(config)
            self.con.execute("DELETE FROM candidates WHERE idx >= ?", (count,))
            self.con.execute(
                "DELETE FROM results WHERE model LIKE 'cand:%' AND CAST(substr(model, 6) AS INTEGER) >= ?", (count,)
            )
        if undone:
            (self.run_dir / CALIBRATION_FILE).unlink(missing_ok=True)

    def record_calibration(self, config: SearchConfig, record: dict[str, Any]) -> None:
        """The pilot is done: its choice (in the config) and its record, in one transaction; then the record
        as calibration.json, written whole (`write_calibration_file` writes it again if a kill lost it)."""
        with self.transaction():
            self._write_config(config)
            self._set_meta("calibration", record)
        self.write_calibration_file(always=True)

    def write_calibration_file(self, always: bool = False) -> None:
        """calibration.json from the stored record, where the run has one (and the file is missing)."""
        path = self.run_dir / CALIBRATION_FILE
        record = self.calibration()
        if record is not None and (always or not path.exists()):
            write_whole(path, json.dumps(record, indent=2) + "\n")

    def _write_config(self, config: SearchConfig) -> None:
        """The run's config, as every later command reads it back (inside the caller's transaction)."""
        self._set_meta("config", config.to_dict())

    def _set_meta(self, key: str, value: Any) -> None:
        """meta[key] = value as JSON, replacing what was there (inside the caller's transaction)."""
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_results(self, model: str, split: str, rows: Sequence[ScoredExample]) -> None:
        """Per-example results of the base model, or of an expert on the test split, atomically."""
        with self.transaction():
            self._insert_results(model, split, rows)
