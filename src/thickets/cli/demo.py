"""`thickets demo`: the embedded model end to end, sized to finish in about 10 minutes on 2 CPU cores.

Task: reasoning-gym `products` (1-2 digit factors). We measured SmolLM2-135M-Instruct at about
30% there, with short answers, and perturbed copies scatter around it, so selection has room to
show whether the thicket exists at this scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thickets.analysis.reports import ensemble, print_table
from thickets.progress import console
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search

DEMO_CONFIG = SearchConfig(
    model="smollm2-135m",
    task="products",
    population=48,
    sigmas=(1e-3, 2e-3),
    val_size=48,
    max_new_tokens=12,
    seed=0,
)
DEMO_TOP_K = (3, 5)  # K=1 is the best single expert, always reported
DEMO_TEST_SIZE = 150


def demo(run_dir: str | Path = "runs/demo", *, progress: bool = True) -> dict[str, Any]:
    """Search, then ensemble; prints the table and returns the report."""
    c = DEMO_CONFIG
    console.print(
        f"[bold]thickets demo[/]: RandOpt on {c.model}, task {c.task}: {c.population} perturbations "
        f"(sigma {', '.join(map(str, c.sigmas))}) scored on {c.val_size} validation examples, then the "
        f"top-K vote on {DEMO_TEST_SIZE} held-out test examples. Run folder: {run_dir}"
    )
    search(c, run_dir, progress=progress)
    report = ensemble(run_dir, DEMO_TOP_K, DEMO_TEST_SIZE, progress=progress)
    print_table(report)
    print(f"report: {Path(run_dir) / 'report.md'}")
    return report
