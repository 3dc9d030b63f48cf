"""The sandbox against hostile code: every case bounded in time, and the host checked afterwards."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from thickets.tasks.code.sandbox import isolation, run_python

pytestmark = pytest.mark.timeout(300)  # a hang guard: whatever the code does, the sandbox returns

STRONG = isolation() == "namespace"
MODES = ["namespace", "process"] if STRONG else ["process"]
needs_namespace = pytest.mark.skipif(
    not STRONG, reason="host files are only protected in namespace mode (root with unshare); here: " + isolation()
)


def sandbox_processes() -> list[int]:
    """Live processes started by this test process's sandboxes (the launcher tags its argv)."""
    tag, pids = f"thickets-sandbox:{os.getpid()}".encode(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                state = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if tag in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def test_isolation_is_namespace_when_root_with_unshare():
    import shutil

    if os.geteuid() == 0 and shutil.which("unshare") and not os.environ.get("THICKETS_SANDBOX"):
        assert isolation() == "namespace"


def test_runs_code_and_reports_exit(mode):
    ok = run_python("import math, collections, re\nprint(math.factorial(5))", mode=mode)
    assert ok.ok and ok.status == "passed" and ok.returncode == 0 and ok.stdout == "120\n"
    bad = run_python("assert 1 == 2, 'nope'", mode=mode)
    assert not bad.ok and bad.status == "failed" and "AssertionError: nope" in bad.stderr
    assert run_python("raise SystemExit(3)", mode=mode).returncode == 3
    assert run_python("def f(:", mode=mode).status == "failed"


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\nprint('end')",
        "import os\nos._exit(0)",
        "raise SystemExit(0)",
        "import sys\nsys.stdout.write('0' * 32)\nsys.exit()",
    ],
)
def test_exit_status_zero_before_the_end_is_not_a_pass(mode, code):
    r = run_python(code, mode=mode)
    assert r.returncode == 0 and r.status == "incomplete" and not r.ok


def test_runs_in_its_own_writable_folder(mode):
    r = run_python(
        "import os, tempfile\nopen('a.txt', 'w').write('x')\n"
        "print(os.getcwd(), os.environ['HOME'], tempfile.gettempdir(), sorted(os.environ))",
        mode=mode,
    )
    assert r.ok, r.stderr
    cwd, home, tmp, keys = r.stdout.split(" ", 3)
    assert home == cwd and tmp.startswith(cwd)
    assert keys.strip() == str(sorted(["HOME", "LANG", "PATH", "TMPDIR"]))
    assert not Path(cwd, "a.txt").exists()  # gone with the folder


def test_temporary_folder_is_removed(mode, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_python("open('x', 'w').write('y' * 1000)", mode=mode)
    run_python("while True: pass", mode=mode, timeout_s=0.5, cpu_s=1)
    assert list(tmp_path.iterdir()) == []


def test_endless_loop_times_out(mode):
    r = run_python("while True: pass", mode=mode, timeout_s=1.0, cpu_s=5)
    assert r.status == "timeout" and not r.ok
    assert sandbox_processes() == []


def test_cpu_limit_counts_as_timeout(mode):
    r = run_python("while True: pass", mode=mode, timeout_s=10.0, cpu_s=1)
    assert r.status == "timeout"


def test_sleep_times_out(mode):
    r = run_python("import time; time.sleep(100)", mode=mode, timeout_s=1.0)
    assert r.status == "timeout"
    assert sandbox_processes() == []


def test_fork_bomb_is_contained(mode):
    r = run_python("import os\nwhile True: os.fork()", mode=mode, timeout_s=2.0, cpu_s=2)
    assert not r.ok
    assert sandbox_processes() == []
    assert run_python("print('next')", mode=mode).stdout == "next\n"


@needs_namespace
def test_ctypes_fork_bomb_is_contained():
    """fork() through libc gets past the Python-level patch; NPROC (as nobody) and the PID namespace hold."""
    r = run_python(
        "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True: libc.fork()", mode="namespace", timeout_s=1.5, cpu_s=2
    )
    assert not r.ok
    assert sandbox_processes() == []
    assert run_python("print('next')").stdout == "next\n"


def test_escaped_session_is_killed(mode):
    """A child that leaves the process group with setsid() (via libc) must not outlive the run."""
    code = (
        "import ctypes, time\nlibc = ctypes.CDLL(None)\n"
        "if libc.fork() == 0:\n    libc.setsid()\n    time.sleep(60)\nelse:\n    time.sleep(0.2)\n"
    )
    run_python(code, mode=mode, timeout_s=5.0)
    time.sleep(0.1)
    assert sandbox_processes() == []


def test_memory_bomb_fails(mode):
    r = run_python("x = bytearray(8 * 1024**3)", mode=mode, memory_mb=256)
    assert r.status == "memory" and not r.ok


def test_output_is_capped(mode):
    r = run_python("import sys\nwhile True: sys.stdout.write('x' * 65536)", mode=mode, timeout_s=3, max_output=1000)
    assert not r.ok
    assert len(r.stdout) < 1100 and len(r.stderr) < 11_000


@needs_namespace
def test_writes_outside_the_folder_do_not_land(tmp_path):
    escape = Path(f"/tmp/thickets_sandbox_escape_{uuid.uuid4().hex}")
    own = tmp_path / "escaped.txt"
    code = "\n".join(
        f"try:\n    open({str(p)!r}, 'w').write('pwned')\nexcept OSError as e:\n    print(e)"
        for p in (escape, own, Path("/work/thickets_escape"), Path("/root/thickets_escape"))
    )
    r = run_python(code, mode="namespace")
    assert r.ok, r.stderr
    assert not escape.exists() and not own.exists()
    assert not Path("/work/thickets_escape").exists() and not Path("/root/thickets_escape").exists()
    # and as a process: who it is and what it can see
    r = run_python(
        "import os\nprint(os.getuid(), os.getgid(), os.getgroups(), sorted(os.listdir('/')))", mode="namespace"
    )
    assert r.stdout.startswith("65534 65534 [] ") and "tmp" not in r.stdout and "work" not in r.stdout


@pytest.mark.parametrize("how", ["socket", "libc"])
def test_network_is_unreachable(mode, how):
    if how == "libc" and mode != "namespace":
        pytest.skip("in process mode only the in-process socket patch stands between code and the network")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        if how == "socket":
            code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        else:
            code = (
                "import ctypes, socket, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "fd = libc.socket(2, 1, 0)\n"
                f"addr = struct.pack('<HH4s8x', 2, socket.htons({port}), bytes([127, 0, 0, 1]))\n"
                "assert libc.connect(fd, addr, 16) == 0, ctypes.get_errno()"
            )
        r = run_python(code, mode=mode, timeout_s=4.0)
        assert not r.ok
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
