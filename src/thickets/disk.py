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


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by setting it back."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(path: Path) -> None:
    """Give a file made through a private temporary (0600, and 0700 for a folder and all it holds) the
    permissions the umask gives any new file: a model written for a server running as another user
    must be readable by it, as a plain `save_pretrained` would leave it."""
    mask = umask()
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; when the block ends without error it becomes `out` (an
    empty `out` is replaced; if another process made `out` meanwhile, theirs is kept), with the
    permissions the umask gives. On error nothing is left behind: a reader never sees a half-written
    folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        as_umask_allows(tmp)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_whole(path: Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` through a uniquely named temporary beside it, renamed over it: a reader (or a
    run resumed after kill -9) sees the old file or the new one, never half of one, and two writers
    never share a temporary."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        as_umask_allows(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
