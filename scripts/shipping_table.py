"""One table of the ways to ship one model from a run, on the same held-out questions, from what the
commands stored (nothing is generated): the base, the best single expert and the top-K vote (from a
merge's gate), each merge, and each distillation's round 1.

    python scripts/shipping_table.py --merged DIR [DIR ...] --distilled RUN/NAME [RUN/NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pts(row: dict) -> str:
    vs = row.get("vs_base")
    if not vs:
        return "-"
    lo, hi = vs["ci95"]
    return f"{100 * vs['gain']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--merged", nargs="+", default=[], help="folders `thickets merge` wrote")
    ap.add_argument("--distilled", nargs="+", default=[], help="distillation folders (RUN/NAME)")
    args = ap.parse_args()
    rows: list[tuple[str, int, float, str]] = []
    sizes = set()
    for i, folder in enumerate(args.merged):
        gate = json.loads((Path(folder) / "thickets_merge.json").read_text())["gate"]
        sizes.add(gate["gate_size"])
        for row in gate["rows"] if i == 0 else gate["rows"][-1:]:
            rows.append((row["label"], row["answers_per_question"], row["accuracy"], _pts(row)))
    for folder in args.distilled:
        record = json.loads((Path(folder) / "round-1" / "round.json").read_text())
        test = record["test"]
        sizes.add(test["test_size"])
        loss = record["config"].get("loss", "ce")
        label = f"distilled, {loss} ({record['kept_total']} of {record['traces']} traces kept)"
        d = test["distilled"]
        rows.append((label, 1, d["accuracy"], _pts(d)))
    if len(sizes) > 1:
        raise SystemExit(f"the rows were measured on test splits of different sizes: {sorted(sizes)}")
    size = sizes.pop() if sizes else "?"
    print(f"| model ({size} test questions) | answers a question | accuracy | vs base, pts [95% CI] |")
    print("|---|---:|---:|---:|")
    for label, answers, acc, pts in rows:
        print(f"| {label} | {answers} | {100 * acc:.1f}% | {pts} |")


if __name__ == "__main__":
    main()
