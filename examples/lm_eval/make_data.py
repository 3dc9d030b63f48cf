"""Write a run's test questions, as thickets asks and grades them, for lm-eval's `thickets_products` task.

    .venv/bin/python examples/lm_eval/make_data.py --run-dir runs/demo --test-size 150

writes examples/lm_eval/products_test.jsonl: one {"question", "answer"} a line, the run's own test split
(the questions `thickets ensemble` scores), so lm-eval's accuracy is comparable with thickets' report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import task_for
from thickets.tasks.splits import make_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--test-size", type=int, default=150)
    parser.add_argument("--out", default=str(Path(__file__).with_name("products_test.jsonl")))
    a = parser.parse_args()
    config = load_run_config(a.run_dir)
    task = task_for(config)
    _, test = make_splits(task, config.split_seed, config.val_size, a.test_size, scheme=config.split_scheme)
    with open(a.out, "w") as f:
        for ex in test:
            f.write(json.dumps({"question": ex.prompt, "answer": str(ex.data["answer"])}) + "\n")
    print(f"{len(test)} test questions of {a.run_dir} in {a.out}")


if __name__ == "__main__":
    main()
