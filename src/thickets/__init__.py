"""thickets: gradient-free post-training by RandOpt (random perturbations, top-K majority vote).

    from thickets import SearchConfig, search, ensemble, export_candidate
    search(SearchConfig(task="products", population=48, sigmas=(1e-3, 2e-3)), "runs/a")
    report = ensemble("runs/a", top_k=[1, 5], test_size=150)
    export_candidate("runs/a", rank=1, out="best-model")

The package tree shows the layers (docs/architecture.md): noise and models at the bottom, then
engines and tasks, randopt (the algorithm), what is built on it (analysis, ship, baselines,
bench, toy), and the command line on top.
"""

from thickets.analysis.reports import ensemble
from thickets.errors import ThicketsError
from thickets.noise import ParamFilter, PerturbationSpec
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search
from thickets.randopt.vote import majority_vote
from thickets.ship.export import export_candidate, export_spec, rebuild
from thickets.tasks import get_task, register_task
from thickets.version import __version__

__all__ = [
    "ParamFilter",
    "PerturbationSpec",
    "SearchConfig",
    "ThicketsError",
    "__version__",
    "ensemble",
    "export_candidate",
    "export_spec",
    "get_task",
    "majority_vote",
    "rebuild",
    "register_task",
    "search",
]
