"""The commands that answer at once (`--help`, every subcommand's `--help`, `tasks`, `score`) import no
heavy package: each runs in a fresh interpreter, which then lists the packages it imported
(docs/architecture.md, "Imports at the top of a module")."""

import json
import subprocess
import sys

import pytest

from tests.support import cli_env
from thickets.cli.commands import COMMANDS

#: what a command line that starts at once must not import (seconds of start-up each)
FORBIDDEN = ("torch", "transformers", "peft", "trl", "ray", "vllm")

#: runs the command line's main with the arguments given, then prints the top-level names of every
#: module imported, as the last line of stdout
PROBE = """
import json, sys
from thickets.cli.commands import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print()
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""

COUNTDOWN = ["score", "--task", "countdown", "--example", '{"numbers": [3, 5, 7], "target": 22}']
PRODUCTS = ["score", "--task", "products", "--example", '{"answer": "42"}']

ARGVS = [
    ["--help"],
    ["tasks"],
    [*COUNTDOWN, "--completion-file", "countdown.txt"],
    [*PRODUCTS, "--completion-file", "products.txt"],
    *([name, "--help"] for name in COMMANDS),
]


def _imported(argv: list[str], cwd) -> tuple[int, set[str]]:
    """(exit status of main, top-level names of the modules imported) of `thickets ARGV` in a fresh
    interpreter."""
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=120
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return result["code"], set(result["modules"])


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_a_command_that_starts_at_once_imports_no_heavy_package(argv, tmp_path):
    (tmp_path / "countdown.txt").write_text("<answer>3 * 5 + 7</answer>")
    (tmp_path / "products.txt").write_text("6 * 7 = 42")
    code, modules = _imported(argv, tmp_path)
    assert code == 0, f"thickets {' '.join(argv)} exited with {code}"
    assert "thickets" in modules  # the probe saw the command line's imports
    offenders = sorted(set(FORBIDDEN) & modules)
    assert not offenders, f"thickets {' '.join(argv)} imports {', '.join(offenders)} (import them inside the function)"
