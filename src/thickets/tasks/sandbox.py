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
minimal environment, and a prelude that replaces os.fork/exec/spawn/system, subprocess,
and socket with functions that raise before the user code is compiled. Those patches are
defence in depth only: code using ctypes (or reloading modules) gets past them, which is why
the kernel mechanisms above matter. Output goes to files (not pipes) capped by RLIMIT_FSIZE,
so a chatty or hung child can neither deadlock the caller nor fill its memory, and the wall
clock is enforced by the caller, which kills the whole process group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

NOBODY = 65534
_SETUP_FAILED = 125  # the launcher's exit status when it could not build the sandbox
_FILE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: bounds captured output and every file the child writes
_SCRATCH_MB = 64  # size of the tmpfs the child may write to (namespace mode)
_UNSHARE = ("--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
            "--propagation", "private")

# Runs as `python -I -S -B -u -c _LAUNCHER mode run_dir cpu_s memory_mb nproc`: builds the jail
# (namespace mode), drops privileges, sets limits, patches, then runs run_dir/main.py as __main__.
_LAUNCHER = r'''
import os, sys, resource
def _setup():
    mode, run_dir = sys.argv[1], sys.argv[2]
    cpu_s, memory_mb, nproc = (int(a) for a in sys.argv[3:6])
    with open(os.path.join(run_dir, "main.py"), encoding="utf-8") as f:
        source = f.read()
    if mode == "namespace":
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384
        def mount(src, dst, fstype, flags, data=None):
            if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags,
                          data and data.encode()) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "mount %s on %s: %s" % (src, dst, os.strerror(e)))
        def bind(src, dst, flags):
            mount(src, dst, None, BIND | REC)
            mount(None, dst, None, REMOUNT | BIND | flags)
        root = os.path.join(run_dir, "root")
        mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
        done = []
        for path in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr",
                     os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))]:
            if not os.path.lexists(path) or any(path == d or path.startswith(d + "/") for d in done):
                continue
            target = root + path
            if os.path.islink(path) and os.path.dirname(path) == "/":
                os.symlink(os.readlink(path), target)
                continue
            os.makedirs(target, exist_ok=True)
            bind(path, target, RDONLY | NOSUID | NODEV)
            done.append(path)
        os.makedirs(root + "/dev")
        for dev in ("null", "zero", "full", "random", "urandom"):
            open(root + "/dev/" + dev, "w").close()
            bind("/dev/" + dev, root + "/dev/" + dev, NOSUID | NOEXEC)
        os.makedirs(root + "/sandbox")
        mount("tmpfs", root + "/sandbox", "tmpfs", NOSUID | NODEV | NOEXEC,
              "size=%dm,mode=700,uid=%d,gid=%d" % (SCRATCH_MB, NOBODY, NOBODY))
        mount(None, root, None, REMOUNT | RDONLY | NOSUID | NODEV, "size=1m,mode=755")
        os.chroot(root)
        os.chdir("/sandbox")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay powerless
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.makedirs("tmp")
        with open("main.py", "w", encoding="utf-8") as f:
            f.write(source)
        pid = os.fork()  # we are the namespace's init: wait, and report a signal death as 128 + signal
        if pid:          # ourselves (unshare does not pass some signals on reliably, e.g. SIGXCPU)
            status = os.waitpid(pid, 0)[1]
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    for lim, val in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
                     (resource.RLIMIT_AS, (memory_mb << 20,) * 2),
                     (resource.RLIMIT_FSIZE, (FILE_LIMIT,) * 2),
                     (resource.RLIMIT_NOFILE, (256, 256)),
                     (resource.RLIMIT_CORE, (0, 0)),
                     (resource.RLIMIT_NPROC, (nproc, nproc))):
        resource.setrlimit(lim, val)
    return source
try:
    _source = _setup()
except BaseException as e:
    sys.stderr.write("thickets sandbox setup failed: %r\n" % (e,))
    os._exit(SETUP_FAILED)
def _refuse(*a, **k):
    raise PermissionError("disabled in the thickets sandbox")
import socket, _posixsubprocess
for _n in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve",
           "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl",
           "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "kill", "killpg", "setsid"):
    if hasattr(os, _n):
        setattr(os, _n, _refuse)
_posixsubprocess.fork_exec = _refuse
if sys.argv[1] != "namespace":  # there the network namespace has no route anywhere
    class _NoSocket(socket.socket):  # a subclass, so that ssl and asyncio still import
        def __init__(self, *a, **k):
            _refuse()
    socket.socket = socket.SocketType = _NoSocket
    for _n in ("socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
        setattr(socket, _n, _refuse)
import types
_main = types.ModuleType("__main__")
_main.__file__ = "main.py"
_main.__builtins__ = __builtins__
sys.modules["__main__"] = _main
sys.argv = ["main.py"]
_code = compile(_source, "main.py", "exec")
del _setup, _source, _n, socket, _posixsubprocess, types, resource
exec(_code, _main.__dict__)
'''.replace("SCRATCH_MB", str(_SCRATCH_MB)).replace("NOBODY", str(NOBODY)) \
   .replace("FILE_LIMIT", str(_FILE_LIMIT)).replace("SETUP_FAILED", str(_SETUP_FAILED))


@dataclass(frozen=True)
class SandboxResult:
    """`ok` iff the program exited 0 by itself. `status`: passed, failed (non-zero exit),
    timeout (wall clock or CPU limit), memory (MemoryError), killed (other signal), error (the
    sandbox itself could not run it)."""

    ok: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str


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


def _argv(mode: str, run_dir: Path, cpu_s: int, memory_mb: int, max_processes: int) -> list[str]:
    python = [sys.executable, "-I", "-S", "-B", "-u", "-c", _LAUNCHER, mode, str(run_dir),
              str(cpu_s), str(memory_mb), str(max_processes),
              f"thickets-sandbox:{os.getpid()}"]  # a tag that finds this caller's children in ps
    return [shutil.which("unshare") or "unshare", *_UNSHARE, "--", *python] if mode == "namespace" else python


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def _run(code: str, mode: str, timeout_s: float, cpu_s: int, memory_mb: int, max_output: int,
         max_processes: int) -> SandboxResult:
    run_dir = Path(tempfile.mkdtemp(prefix="thickets-sandbox-"))  # 0700, the caller's own
    try:
        work = run_dir / "work"
        (work / "tmp").mkdir(parents=True)
        (run_dir / "root").mkdir()
        (run_dir / "main.py").write_text(code, encoding="utf-8")
        shutil.copy(run_dir / "main.py", work / "main.py")
        home = "/sandbox" if mode == "namespace" else str(work)
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": f"{home}/tmp", "LANG": "C.UTF-8"}

        timed_out = False
        with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen(_argv(mode, run_dir, cpu_s, memory_mb, max_processes),
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                        start_new_session=True, close_fds=True)  # no preexec_fn: thread-safe
            except OSError as e:
                return SandboxResult(False, "error", None, "", f"could not start the sandbox: {e}")
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
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rc = proc.returncode
    last_line = stderr.rstrip().rpartition("\n")[2]
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):  # 128 + n: signal n in namespace mode
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif (rc == _SETUP_FAILED and "thickets sandbox setup failed" in stderr) or \
            (mode == "namespace" and stderr.startswith("unshare: ")):
        status = "error"
    elif last_line.startswith("MemoryError"):
        status = "memory"
    elif rc < 0 or rc > 128:  # killed by a signal (unshare reports it as 128 + signal)
        status = "killed"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, rc, stdout, stderr)


@lru_cache(maxsize=None)
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


def run_python(code: str, *, timeout_s: float = 5.0, cpu_s: int = 5, memory_mb: int = 512, max_output: int = 10_000,
               max_processes: int = 32, mode: str | None = None) -> SandboxResult:
    """Run `code` as a script in a sandbox and report how it ended. Never raises for what the code does.

    `max_processes` is RLIMIT_NPROC (enforced for the sandbox user only in namespace mode, where it
    is counted over all sandboxes running at once); `mode` overrides `isolation()` (tests).
    """
    return _run(code, mode or isolation(), timeout_s, cpu_s, memory_mb, max_output, max_processes)
