"""Files on disk: content hashes, and folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def sha256_of(files: Sequence[Path], label: Callable[[Path], str] | None = None) -> str:
    """sha256 over the files' bytes in the given order, each preceded by `label(file)` and a NUL when
    a label is given (so renaming a file inside a folder changes the digest)."""
    h = hashlib.sha256()
    for f in files:
        if label is not None:
            h.update(label(f).encode() + b"\0")
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
