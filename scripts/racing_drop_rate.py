"""How often Hoeffding racing drops a candidate exactly as good as the K-th: the rule before (a one-check
Hoeffding margin on the remaining examples, tested after every chunk with no correction) and thickets'
rule now (Serfling's bound on the final mean, union-bounded over the checks), side by side.

    .venv/bin/python scripts/racing_drop_rate.py [--trials 2000]

A valid rule stays at or below delta (0.05 here). Recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import random

from thickets.racing import Race, simulate_drop_rate


def old_rule_drop_rate(race: Race, correct: int, trials: int, seed: int = 0) -> float:
    """The rule thickets used before: remaining mean <= mean so far + range * sqrt(ln(1/delta) / 2m)."""
    rng = random.Random(seed)
    row = [1.0] * correct + [0.0] * (race.n - correct)
    threshold, drops = correct / race.n, 0
    for _ in range(trials):
        rng.shuffle(row)
        for hi in range(race.chunk, race.n, race.chunk):
            seen = row[:hi]
            margin = math.sqrt(math.log(1 / race.delta) / (2 * hi))
            bound = (sum(seen) + (race.n - hi) * min(1.0, sum(seen) / hi + margin)) / race.n
            if bound < threshold:
                drops += 1
                break
    return drops / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--delta", type=float, default=0.05)
    a = parser.parse_args()
    print("| validation examples | chunk | candidate's score | drop rate before | drop rate now | delta |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, chunk in ((48, 8), (64, 16), (200, 8), (200, 32)):
        for share in (0.1, 0.3, 0.5):
            race = Race(n, 5, "hoeffding", a.delta, chunk=chunk)
            k = round(share * n)
            print(
                f"| {n} | {chunk} | {k / n:.2f} | {old_rule_drop_rate(race, k, a.trials):.3f} | "
                f"{simulate_drop_rate(race, k, a.trials):.3f} | {a.delta:g} |"
            )


if __name__ == "__main__":
    main()
