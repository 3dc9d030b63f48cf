#!/usr/bin/env bash
# The static checks CI runs before the tests: lint, format, types, and the import contracts that keep
# the layers of docs/architecture.md (no cycles, no import from a higher layer).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check src tests scripts
.venv/bin/mypy
.venv/bin/lint-imports
