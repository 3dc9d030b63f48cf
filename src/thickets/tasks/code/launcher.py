"""The sandbox's first process: builds the jail, drops privileges, sets limits, then runs untrusted work.

Run as ``python -I -S -B -u launcher.py CONFIG_JSON TAG`` by `sandbox.py`, never imported
by thickets itself. Standard library only, and `pipes.py` beside it loaded by path: ``-I -S`` keep
site-packages and PYTHON* variables out of a script's interpreter, so there is no import path yet.

Two roles, given in the config:

"script": run ``main.py`` as ``__main__`` (generated code and its tests). The completion token is
read from stdin before any untrusted code exists and written to the ``done`` file descriptor only
after the script returns normally, so a program that exits early (``sys.exit(0)``,
``os._exit(0)``, ``SystemExit`` from ``main()``) or prints a fake marker cannot pass.

"server": a scorer zygote. It imports the modules it is asked to warm, then for each request
forks a child that runs one call of a third-party scorer on model output with CPU, memory and
process limits, stdin/stdout closed, and answers over a pipe of its own. The zygote waits with a
wall-clock backstop, kills a child that runs past it, and sends the parent one JSON line per call.
Each call runs in a fresh fork, so nothing one answer does (monkeypatching the scorer, say) reaches
the next. A child that dies without an answer and without using up its CPU time (killed from outside:
the OOM killer, say) is run once more before its crash is reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: nothing but what the launcher needs is loaded
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

_spec = importlib.util.spec_from_file_location("thickets_pipes", os.path.join(os.path.dirname(__file__), "pipes.py"))
assert _spec is not None and _spec.loader is not None  # a .py path always has a source loader
pipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipes)

SETUP_FAILED = 125
NOBODY = 65534
FILE_LIMIT = 16 * 1024 * 1024
_REFUSED = (
    "fork",
    "forkpty",
    "system",
    "popen",
    "posix_spawn",
    "posix_spawnp",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execvp",
    "execvpe",
    "spawnv",
    "spawnve",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "spawnvp",
    "spawnvpe",
    "kill",
    "killpg",
    "setsid",
)


def _mount_jail(run_dir: str, scratch_mb: int, binds: Sequence[str]) -> None:
    """A fresh root on tmpfs: read-only binds of the system, Python and `binds`, a private /sandbox."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        if (
            libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode())
            != 0
        ):
            e = ctypes.get_errno()
            raise OSError(e, "mount %s on %s: %s" % (src, dst, os.strerror(e)))

    def bind(src: str, dst: str, flags: int) -> None:
        mount(src, dst, None, BIND | REC)
        mount(None, dst, None, REMOUNT | BIND | flags)

    root = os.path.join(run_dir, "root")
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
    done: list[str] = []
    system = [
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/usr",
        os.path.realpath(sys.base_prefix),
        os.path.dirname(os.path.realpath(sys.executable)),
    ]
    for path in system + [os.path.realpath(b) for b in binds]:
        if not os.path.lexists(path) or any(path == d or path.startswith(d + "/") for d in done):
            continue
        target = root + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)
            continue
        if not os.path.isdir(path):
            continue
        os.makedirs(target, exist_ok=True)
        bind(path, target, RDONLY | NOSUID | NODEV)
        done.append(path)
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(root + "/dev/" + dev, "w").close()
        bind("/dev/" + dev, root + "/dev/" + dev, NOSUID | NOEXEC)
    os.makedirs(root + "/sandbox")
    mount(
        "tmpfs",
        root + "/sandbox",
        "tmpfs",
        NOSUID | NODEV | NOEXEC,
        "size=%dm,mode=700,uid=%d,gid=%d" % (scratch_mb, NOBODY, NOBODY),
    )
    mount(None, root, None, REMOUNT | RDONLY | NOSUID | NODEV, "size=1m,mode=755")
    os.chroot(root)
    os.chdir("/sandbox")
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay powerless
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.makedirs("tmp")


def _become_init() -> None:
    """In a new PID namespace we are its init: fork, wait, and report a signal death as 128 + signal
    ourselves (unshare does not pass some signals on reliably, e.g. SIGXCPU)."""
    pid = os.fork()
    if pid:
        status = os.waitpid(pid, 0)[1]
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _limit(cpu_s: int, memory_mb: int, nproc: int) -> None:
    for lim, val in (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
        (resource.RLIMIT_AS, (memory_mb << 20,) * 2),
        (resource.RLIMIT_FSIZE, (FILE_LIMIT,) * 2),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
    ):
        resource.setrlimit(lim, val)


def _refuse(*a: object, **k: object) -> NoReturn:
    raise PermissionError("disabled in the thickets sandbox")


def _patch(no_network: bool) -> None:
    """Defence in depth only (ctypes gets past it): no new processes, signals or sockets from Python."""
    import _posixsubprocess
    import socket

    for name in _REFUSED:
        if hasattr(os, name):
            setattr(os, name, _refuse)
    _posixsubprocess.fork_exec = _refuse
    if no_network:  # namespace mode needs none: its network namespace has no route anywhere

        class _NoSocket(socket.socket):  # a subclass, so that ssl and asyncio still import
            def __init__(self, *a: object, **k: object) -> None:
                _refuse()

        for name in ("socket", "SocketType"):
            setattr(socket, name, _NoSocket)
        for name in ("socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
            setattr(socket, name, _refuse)


# -- role "script" ------------------------------------------------------------------------------


def _run_script(source: str, token: bytes, done_fd: int, no_network: bool) -> NoReturn:
    import types

    _patch(no_network)
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    code = compile(source, "main.py", "exec")
    exec(code, main.__dict__)
    # reached only when the script ran to its end without raising (SystemExit included)
    sys.stdout.flush()
    os.write(done_fd, token)
    os._exit(0)  # no atexit handler of the script runs after the token


# -- role "server" -------------------------------------------------------------------------------


def _call_in_child(
    fn: Callable[..., Any], args: Sequence[Any], cpu_s: int, memory_mb: int, no_network: bool
) -> tuple[int, int]:
    """Fork; the child computes fn(*args) with limits and writes JSON to a pipe. (status, value)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, w)
            os.closerange(w + 1, 4096)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20,) * 2)
            _patch(no_network)
            out: dict[str, Any]
            try:
                out = {"ok": True, "value": fn(*args)}
            except MemoryError:
                out = {"ok": False, "error": "memory"}
            except BaseException as e:
                out = {"ok": False, "error": "raised %s: %s" % (type(e).__name__, str(e)[:200])}
            data = json.dumps(out).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _wait_child(pid: int, r: int, wall_s: float, cpu_s: int) -> dict[str, Any]:
    deadline = time.monotonic() + wall_s
    data: list[bytes] = []
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        b = os.read(r, 1 << 16)
        if not b:
            break
        data.append(b)
    os.close(r)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    signalled = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    spent = usage.ru_utime + usage.ru_stime
    if signalled == signal.SIGXCPU or (signalled == signal.SIGKILL and spent >= cpu_s):
        return {"ok": False, "error": "timeout"}  # SIGKILL at the hard CPU limit, when SIGXCPU was caught
    if timed_out:  # the wall backstop with CPU to spare: it blocked, or the machine gave it no time
        return {"ok": False, "error": "stalled (%.1f s of CPU in %.0f s)" % (spent, wall_s)}
    try:
        out = json.loads(b"".join(data))
    except ValueError:
        return {"ok": False, "error": "crashed (exit status %s)" % status}
    if not isinstance(out, dict) or "ok" not in out:
        return {"ok": False, "error": "crashed (malformed result)"}
    return out


def _serve(config: dict[str, Any], no_network: bool) -> NoReturn:
    """Requests: 4-byte length + pickled (op, target, payload) from the trusted parent on stdin;
    replies: one JSON line each on fd 1 (set aside before anything else can write to it)."""
    import importlib

    reply_fd = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 1)
    cache: dict[str, Callable[..., Any]] = {}

    def resolve(target: str) -> Callable[..., Any]:
        if target not in cache:
            module, _, name = target.partition(":")
            cache[target] = getattr(importlib.import_module(module), name)
        return cache[target]

    def reply(obj: object) -> None:
        data = (json.dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(reply_fd, view) :]

    while True:
        message = pipes.receive(0)
        if message is None:
            os._exit(0)
        op, target, payload = message
        try:
            fn = resolve(target)
        except Exception as e:
            reply({"ok": False, "error": "cannot load %s: %r" % (target, e)})
            continue
        if op == "warm":  # trusted input only: runs in the zygote, its state kept for the children
            try:
                fn(*payload)
                reply({"ok": True, "value": None})
            except Exception as e:
                reply({"ok": False, "error": "warm-up failed: %r" % (e,)})
            continue
        wall_s, cpu_s, memory_mb, calls = payload
        results = []
        for args in calls:
            for _ in range(2):  # a crash or stall that is no verdict on the answer gets one more try
                out = _wait_child(*_call_in_child(fn, args, cpu_s, memory_mb, no_network), wall_s, cpu_s)
                if not str(out.get("error", "")).startswith(("crashed", "stalled")):
                    break
            results.append(out)
        reply({"ok": True, "value": results})


def main() -> None:
    config = json.loads(sys.argv[1])
    mode, role, run_dir = config["mode"], config["role"], config["run_dir"]
    try:
        if role == "script":
            with open(os.path.join(run_dir, "main.py"), encoding="utf-8") as f:
                source = f.read()
            token = sys.stdin.buffer.read(64)  # before any untrusted code: the parent closes the pipe after it
            done_fd = os.open(os.path.join(run_dir, "done"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if mode == "namespace":
            _mount_jail(run_dir, config["scratch_mb"], config.get("binds", []))
            if role == "script":
                with open("main.py", "w", encoding="utf-8") as f:
                    f.write(source)
            _become_init()
        if role == "server":
            sys.path[:] = config["sys_path"]
            for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[key] = "1"
        _limit(config["cpu_s"], config["memory_mb"], config["nproc"])
    except BaseException as e:
        sys.stderr.write("thickets sandbox setup failed: %r\n" % (e,))
        os._exit(SETUP_FAILED)
    if role == "script":
        _run_script(source, token, done_fd, mode != "namespace")
    else:
        _serve(config, mode != "namespace")


main()
