"""How long the command line takes to answer, before and after a change, measured side by side.

    python scripts/startup_bench.py --before 4c9c3b0 [--runs 7]

Checks out `--before` into a temporary worktree, then runs each command with that tree's `src` and
with this tree's `src` in turn (A B A B ..., each in a fresh interpreter of this venv), and prints
the median wall and CPU seconds of each and their ratio. A busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "thickets --help": ["--help"],
    "thickets score (countdown)": [
        "score",
        "--task",
        "countdown",
        "--example",
        '{"numbers": [3, 5, 7], "target": 22}',
        "--completion-file",
        "-",
    ],
    "thickets search --help": ["search", "--help"],
}
ENTRY = "import sys; from thickets.cli.commands import main; sys.exit(main(sys.argv[1:]))"


def _once(src: Path, argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `thickets ARGV` with `src` first on the path, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(src), "NO_COLOR": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", ENTRY, *argv],
        env=env,
        input="<answer>3 * 5 + 7</answer>",
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"thickets {' '.join(argv)} failed with {src}: {r.stderr.strip().splitlines()[-1:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.before], check=True)
        try:
            for label, argv in COMMANDS.items():
                runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
                for _ in range(args.runs):
                    runs["before"].append(_once(old / "src", argv))
                    runs["after"].append(_once(ROOT / "src", argv))
                med = {
                    k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()
                }
                results[label] = {
                    "before_wall_s": med["before"][0],
                    "after_wall_s": med["after"][0],
                    "before_cpu_s": med["before"][1],
                    "after_cpu_s": med["after"][1],
                    "wall_speedup": med["before"][0] / med["after"][0],
                    "cpu_speedup": med["before"][1] / med["after"][1],
                }
                r = results[label]
                print(
                    f"{label:<28} wall {r['before_wall_s']:.2f} s -> {r['after_wall_s']:.2f} s "
                    f"({r['wall_speedup']:.1f}x)   CPU {r['before_cpu_s']:.2f} s -> {r['after_cpu_s']:.2f} s "
                    f"({r['cpu_speedup']:.1f}x)",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    if args.json:
        args.json.write_text(json.dumps({"before": args.before, "runs": args.runs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
