"""Files on disk: content hashes, and files and folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


def sha256_of(
    files: Sequence[Path], label: Callable[[Path], str] | None = None, instead: Mapping[Path, bytes] | None = None
) -> str:
    """sha256 over the files' bytes in the given order, each preceded by `label(file)` and a NUL when
    a label is given (so renaming a file inside a folder changes the digest); `instead` gives some
    files' bytes in place of what they hold now."""
    h = hashlib.sha256()
    for f in files:
        if label is not None:
            h.update(label(f).encode() + b"\0")
        if instead is not None and f in instead:
            h.update(instead[f])
            continue
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; when the block ends without error it becomes `out` (an
    empty `out` is replaced; if another process made `out` meanwhile, theirs is kept). On error
    nothing is left behind: a reader never sees a half-written folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` through a uniquely named temporary beside it, renamed over it: a reader (or a
    run resumed after kill -9) sees the old file or the new one, never half of one, and two writers
    never share a temporary."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
