"""Run untrusted, model-generated Python with a wall clock, CPU, memory, process and file limit.

Two isolation levels, the strongest that works is picked once per process (`isolation()`;
the environment variable THICKETS_SANDBOX=namespace|process forces one):

"namespace" (root with util-linux `unshare`, as on this project's machines): the child runs in
new mount, PID, network, IPC and UTS namespaces. Inside, a launcher still running as root
builds a fresh root: a tmpfs holding read-only, nosuid, nodev binds of /usr and the Python
install, /dev/{null,zero,full,random,urandom}, and a size-capped tmpfs at /sandbox (cwd, HOME,
TMPDIR) - the host's /tmp, /work, /root etc. simply do not exist there. It chroots into it,
drops to uid/gid nobody (65534, no supplementary groups, so no capabilities) and sets
no_new_privs before any user code runs. So: no network (the new namespace has only a downed
loopback), no writes to host files (not visible, and read-only where visible), no signals or
ptrace to host processes (own PID namespace), and RLIMIT_NPROC is enforced (it is not for
root). When the namespace's first process dies the kernel kills everything left in it, so a
fork bomb cannot outlive the run even if it calls setsid().

"process" (fallback: not root, or namespaces refused): a new session (setsid) with rlimits,
run in a temporary folder; the whole process group is SIGKILLed at the end. Host files the
user may write are NOT protected, and network is only blocked by the in-process patches below.

Both levels: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps, an
isolated interpreter (`-I -S -B`: no site-packages, no PYTHON* variables, no .pyc writes), a
minimal environment, and patches that replace os.fork/exec/spawn/system, subprocess, and socket
with functions that raise before the user code is compiled. Those patches are defence in depth
only: code using ctypes (or reloading modules) gets past them, which is why the kernel
mechanisms above matter. Output goes to files (not pipes) capped by RLIMIT_FSIZE, so a chatty
or hung child can neither deadlock the caller nor fill its memory, and the wall clock is
enforced by the caller, which kills the whole process group. The launcher is a real script,
`launcher.py`.

A program passes only if it ran to its end: the caller hands the launcher a random token on a
pipe before any untrusted code exists, and the launcher writes it out only after the program
returned normally. Exit status 0 alone proves nothing (`sys.exit(0)` before the tests).

`ScorerSandbox` runs third-party scorers (reasoning-gym, math-verify) on model output the same
way: a zygote process in the same jail (with the Python packages bound read-only) forks one
child per answer, with CPU and memory limits, and answers in JSON.

A verdict must not depend on how busy the machine is: the limits that stop a hostile answer count
CPU time, and the wall clock is only a backstop (`wall_backstop`) far enough past the CPU limit that
only a program that sleeps or blocks meets it, whatever the load.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.tasks.code.pipes import end, import_root, read_line, send

log = logging.getLogger(__name__)

NOBODY = 65534
_SETUP_FAILED = 125  # the launcher's exit status when it could not build the sandbox
_SCRATCH_MB = 64  # size of the tmpfs the child may write to (namespace mode)
_UNSHARE = ("--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child", "--propagation", "private")
_LAUNCHER = str(Path(__file__).with_name("launcher.py"))
_WARM_S = 600.0  # a hang guard on trusted set-up (cold imports on a busy machine), no limit on answers


@dataclass(frozen=True)
class SandboxResult:
    """`ok` iff the program ran to its end and exited 0. `status`: passed, incomplete (exited 0
    before its end: sys.exit, os._exit), failed (non-zero exit), timeout (wall clock or CPU
    limit), memory (MemoryError), killed (other signal), error (the sandbox itself could not run it)."""

    ok: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str


def wall_backstop(cpu_s: float) -> float:
    """The wall clock that ends a run whose CPU time stays under `cpu_s` (it sleeps or blocks): a busy
    machine, four runs to a core, still finishes a run that needs all of its CPU time well before it."""
    return 10.0 + 4.0 * cpu_s


def _read_capped(path: Path, max_output: int) -> str:
    """Head and tail of a file, never more than about max_output characters read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= max_output:
                return f.read().decode("utf-8", "replace")
            half = max_output // 2
            head = f.read(half)
            f.seek(size - half)
            tail = f.read()
    except OSError:
        return ""
    return f"{head.decode('utf-8', 'replace')}\n...[{size - 2 * half} bytes cut]...\n{tail.decode('utf-8', 'replace')}"


def _argv(mode: str, config: dict[str, Any], tag: str = "thickets-sandbox") -> list[str]:
    python = [
        sys.executable,
        "-I",
        "-S",
        "-B",
        "-u",
        _LAUNCHER,
        json.dumps(config),
        f"{tag}:{os.getpid()}",
    ]  # a tag that finds this caller's children in ps
    return [shutil.which("unshare") or "unshare", *_UNSHARE, "--", *python] if mode == "namespace" else python


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _sweep(tag: str, rounds: int = 300) -> None:
    """Kill processes that still carry this run's argv, until none is left (at most about 3 s).

    In process mode: those that left the process group (setsid via ctypes). In namespace mode the
    kernel kills the namespace when its init dies, but asynchronously: this waits for that to
    finish, so no process of the run outlives the call. A process that exec()s something else
    escapes the argv match (process mode only; namespace mode has no such gap).
    """
    needle = tag.encode()
    for _ in range(rounds):  # a forking survivor may add processes while we look
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if needle not in f.read():
                        continue
                os.kill(int(entry.name), signal.SIGKILL)
                found = True
            except OSError:
                pass
        if not found:
            return
        time.sleep(0.01)


def _env(mode: str, work: Path) -> dict[str, str]:
    home = "/sandbox" if mode == "namespace" else str(work)
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": f"{home}/tmp", "LANG": "C.UTF-8"}


def _run(
    code: str, mode: str, timeout_s: float, cpu_s: int, memory_mb: int, max_output: int, max_processes: int
) -> SandboxResult:
    run_dir = Path(tempfile.mkdtemp(prefix="thickets-sandbox-"))  # 0700, the caller's own
    token = secrets.token_hex(16).encode()
    try:
        work = run_dir / "work"
        (work / "tmp").mkdir(parents=True)
        (run_dir / "root").mkdir()
        (run_dir / "main.py").write_text(code, encoding="utf-8")
        shutil.copy(run_dir / "main.py", work / "main.py")
        config = {
            "mode": mode,
            "role": "script",
            "run_dir": str(run_dir),
            "cpu_s": cpu_s,
            "memory_mb": memory_mb,
            "nproc": max_processes,
            "scratch_mb": _SCRATCH_MB,
        }
        timed_out = False
        with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen(
                    _argv(mode, config),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=work,
                    env=_env(mode, work),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                return SandboxResult(False, "error", None, "", f"could not start the sandbox: {e}")
            assert proc.stdin is not None  # stdin=PIPE
            try:
                proc.stdin.write(token)  # read by the launcher before any untrusted code runs
                proc.stdin.close()
            except OSError:
                pass  # it died at once; the status says how
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _killpg(proc.pid)  # leftovers too, when the program exited but its children did not
            proc.wait()
            if os.path.isdir("/proc"):
                _sweep(str(run_dir))
        stdout = _read_capped(run_dir / "stdout", max_output)
        stderr = _read_capped(run_dir / "stderr", max_output)
        try:
            finished = (run_dir / "done").read_bytes() == token
        except OSError:
            finished = False
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rc = proc.returncode
    last_line = stderr.rstrip().rpartition("\n")[2]
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):  # 128 + n: signal n in namespace mode
        status = "timeout"
    elif rc == 0:
        status = "passed" if finished else "incomplete"
    elif (rc == _SETUP_FAILED and "thickets sandbox setup failed" in stderr) or (
        mode == "namespace" and stderr.startswith("unshare: ")
    ):
        status = "error"
    elif last_line.startswith("MemoryError"):
        status = "memory"
    elif rc < 0 or rc > 128:  # killed by a signal (unshare reports it as 128 + signal)
        status = "killed"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, rc, stdout, stderr)


@cache
def isolation() -> str:
    """The strongest isolation that works here: "namespace" or "process" (logged when weaker)."""
    if os.environ.get("THICKETS_SANDBOX") in ("namespace", "process"):
        return os.environ["THICKETS_SANDBOX"]
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = _run("print('ok')", "namespace", 30.0, 5, 256, 2000, 16)
        if probe.ok and probe.stdout.strip() == "ok":
            return "namespace"
        log.warning("sandbox: namespaces unavailable (%s), using process isolation only", probe.stderr.strip()[-300:])
    else:
        log.warning("sandbox: not root or no unshare; generated code runs with rlimits and a process group only")
    return "process"


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    cpu_s: int = 5,
    memory_mb: int = 512,
    max_output: int = 10_000,
    max_processes: int = 32,
    mode: str | None = None,
) -> SandboxResult:
    """Run `code` as a script in a sandbox and report how it ended. Never raises for what the code does.

    `max_processes` is RLIMIT_NPROC (enforced for the sandbox user only in namespace mode, where it
    is counted over all sandboxes running at once); `mode` overrides `isolation()` (tests).
    """
    return _run(code, mode or isolation(), timeout_s, cpu_s, memory_mb, max_output, max_processes)


# -- third-party scorers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One sandboxed call: `value` when `ok`, else `error` ("timeout", "memory", "raised ...", "crashed ...",
    "stalled ...").

    "timeout" is the CPU limit: a verdict on the answer. A call that crashed for a reason of its own
    (killed from outside, say) or stalled (the wall backstop with CPU to spare: it blocked, or a busy machine
    gave it no time) was already run a second time; if it failed again it is `unscored`: no verdict."""

    ok: bool
    value: Any = None
    error: str | None = None

    @property
    def unscored(self) -> bool:
        """Failed for a reason that is not the answer's, twice: to be recorded as unscored, never as wrong."""
        return not self.ok and str(self.error).startswith(("crashed", "stalled"))


class ScorerSandboxError(ThicketsError):
    """The scorer sandbox itself failed: an error in one line, never a verdict on an answer."""


def _import_roots() -> list[str]:
    """The folders the zygote imports from: the folder holding thickets and this interpreter's path, each by
    its real path, the one the jail binds (a virtual environment reached through a link is not there under
    the link's name)."""
    roots = [import_root()]
    for p in sys.path:
        if p and os.path.isdir(p) and (real := os.path.realpath(p)) not in roots:
            roots.append(real)
    return roots


class ScorerSandbox:
    """A zygote in the sandbox that runs `module:function` on untrusted input, one fork per call.

    `call_many(target, [args, ...])` returns one Outcome per args; a call gets `cpu_s` of CPU time and
    ends as a timeout past it, or past `wall_backstop(cpu_s)` of wall clock. `warm(target, args)` runs a
    trusted set-up function in the zygote itself (imports, building a dataset, a first call that fills
    the caches), before any limit, so every later child starts from it.
    """

    def __init__(self, *, cpu_s: int = 5, memory_mb: int = 2048, mode: str | None = None):
        self.cpu_s, self.wall_s, self.memory_mb = cpu_s, wall_backstop(cpu_s), memory_mb
        self.mode = mode or isolation()
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._warmed: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def _start(self) -> None:
        self._run_dir = Path(tempfile.mkdtemp(prefix="thickets-scorer-"))
        (self._run_dir / "root").mkdir()
        roots = _import_roots()
        config = {
            "mode": self.mode,
            "role": "server",
            "run_dir": str(self._run_dir),
            "cpu_s": 10**6,
            "memory_mb": max(self.memory_mb, 2048),
            "nproc": 64,
            "scratch_mb": _SCRATCH_MB,
            "binds": roots,
            "sys_path": roots,
        }
        self._proc = subprocess.Popen(
            _argv(self.mode, config, "thickets-scorer"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self._run_dir,
            env=_env(self.mode, self._run_dir),
            start_new_session=True,
            close_fds=True,
        )
        for target, args in self._warmed:
            self._request("warm", target, args, _WARM_S)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            end(proc)
            if os.path.isdir("/proc") and self._run_dir is not None:
                _sweep(str(self._run_dir))
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _request(self, op: str, target: str, payload: Any, deadline_s: float) -> Any:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None  # started, with both pipes
        if not send(proc.stdin, (op, target, payload)):
            raise ScorerSandboxError("the scorer sandbox died")
        line = read_line(proc.stdout, deadline_s)
        if not line:
            raise ScorerSandboxError("the scorer sandbox did not answer")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ScorerSandboxError(f"the scorer sandbox failed: {reply.get('error', 'no reason given')}")
        return reply["value"]

    def warm(self, target: str, args: Sequence[Any] = ()) -> None:
        """Run a trusted set-up function in the zygote (now and after every restart)."""
        with self._lock:
            key = (target, tuple(args))
            if key in self._warmed:
                return
            self._warmed.append(key)
            if self._proc is not None:
                self._request("warm", target, tuple(args), _WARM_S)

    def call_many(self, target: str, calls: Sequence[Sequence[Any]]) -> list[Outcome]:
        if not calls:
            return []
        payload = (self.wall_s, self.cpu_s, self.memory_mb, [tuple(a) for a in calls])
        deadline_s = 60.0 + 2 * len(calls) * (self.wall_s + 1)  # every call at its backstop, twice
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._stop()
                    self._start()
                try:
                    raw = self._request("call", target, payload, deadline_s)
                    break
                except ScorerSandboxError:
                    self._stop()
                    if attempt:
                        raise
        return [
            Outcome(True, r.get("value")) if r.get("ok") else Outcome(False, error=str(r.get("error"))) for r in raw
        ]


_SHARED: ScorerSandbox | None = None


def scorer_sandbox() -> ScorerSandbox:
    """The process's scorer sandbox, started on first use and stopped at exit."""
    global _SHARED
    if _SHARED is None:
        _SHARED = ScorerSandbox()
        atexit.register(_SHARED.close)
    return _SHARED
