"""Framed messages between thickets and the processes that run untrusted code for it.

Requests go down as a 4-byte length and a pickle (the child trusts its parent); replies come up
as one JSON line each (the parent never unpickles what untrusted code could have written).
The sandbox launcher keeps its own copy of `read_exact`: it runs before any import path exists.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import IO, Any


def import_root() -> str:
    """The folder that holds the thickets package, for child interpreters to import it from (an
    editable install reaches it through a .pth hook that `-S` skips)."""
    return str(Path(__file__).resolve().parents[__name__.count(".")])


def send(stream: IO[bytes], message: Any) -> bool:
    """Write one request; False when the other end is gone."""
    data = pickle.dumps(message)
    try:
        stream.write(struct.pack("<I", len(data)) + data)
        stream.flush()
        return True
    except OSError:
        return False


def read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        b = os.read(fd, n)
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def receive(fd: int) -> Any | None:
    """One request (in the child); None at end of input."""
    head = read_exact(fd, 4)
    if head is None:
        return None
    body = read_exact(fd, struct.unpack("<I", head)[0])
    return None if body is None else pickle.loads(body)


def read_line(stream: IO[bytes], timeout_s: float) -> bytes | None:
    """One reply line within timeout_s; None on timeout, b"" at end of file (the writer is gone)."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf)


def end(proc: subprocess.Popen[bytes]) -> None:
    """Kill a helper process and the process group it leads, reap it, and close our ends of its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass
