"""Which reasoning-gym scorers run a model's answer as code, or hang on it: probe every dataset.

    .venv/bin/python scripts/audit_gym_scorers.py        # about 10 minutes on 2 cores

For each dataset, in a process of its own (memory capped at 3 GB, 15 s wall clock), its scorer is
called on answers that, if executed (eval, exec, sympy's sympify or parse_expr), touch a marker
file in a temporary folder, and on power and allocation bombs. Prints the datasets whose scorer
executed an answer and those that hung or were killed. This is how thickets' list was made
(tests/test_scorer_sandbox.py); thickets runs every reasoning-gym scorer in the scorer sandbox
whatever this finds, so a new release of reasoning-gym needs no change here to be safe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

PROBE = r"""
import json, os, resource, sys
name, folder, bomb = sys.argv[1], sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import reasoning_gym
ds = reasoning_gym.create_dataset(name, size=3, seed=0)
entry = ds[0]
answers = [bomb] if bomb else [f"__import__('os').system('touch {folder}/{k}')" if k % 2 == 0
                               else f"[__import__('os').system('touch {folder}/{k}')]" for k in range(2)]
for answer in answers:
    try:
        ds.score_answer(answer, entry)
    except MemoryError:
        pass
    except Exception:
        pass
print(json.dumps(sorted(os.listdir(folder))))
"""
BOMBS = ("9**9**9**9", "(9**9)**(9**9)", "[0]*10**10")


def probe(name: str, bomb: str = "") -> str:
    with tempfile.TemporaryDirectory() as folder:
        try:
            r = subprocess.run(
                [sys.executable, "-c", PROBE, name, folder, bomb], capture_output=True, text=True, timeout=15
            )
        except subprocess.TimeoutExpired:
            return "hangs"
        if r.returncode != 0:
            return "cannot create" if "create_dataset" in r.stderr or "Error" in r.stderr else "killed"
        return "executes" if json.loads(r.stdout.strip().splitlines()[-1]) else "safe"


def main() -> None:
    from reasoning_gym.factory import DATASETS

    executes, hangs, unusable = [], {}, []
    for name in sorted(DATASETS):
        verdict = probe(name)
        if verdict == "cannot create":
            unusable.append(name)
            continue
        if verdict == "executes":
            executes.append(name)
        for bomb in BOMBS:
            if probe(name, bomb) in ("hangs", "killed"):
                hangs.setdefault(name, []).append(bomb)
        print(f"{name}: {verdict}; hangs on {hangs.get(name, [])}", file=sys.stderr, flush=True)
    print(f"{len(DATASETS)} datasets probed ({len(unusable)} cannot be made alone: {', '.join(unusable)})")
    print(f"run the answer as code ({len(executes)}): {', '.join(executes)}")
    print(f"hang or are killed ({len(hangs)}): " + "; ".join(f"{k} on {', '.join(v)}" for k, v in hangs.items()))


if __name__ == "__main__":
    main()
