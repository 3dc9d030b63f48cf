"""thickets: gradient-free post-training by RandOpt (random perturbations, top-K majority vote).

    from thickets import SearchConfig, search, ensemble, export_candidate
    search(SearchConfig(task="products", population=48, sigmas=(1e-3, 2e-3)), "runs/a")
    report = ensemble("runs/a", top_k=[1, 5], test_size=150)
    export_candidate("runs/a", rank=1, out="best-model")
"""

from thickets.version import __version__  # noqa: E402

from thickets.randopt.config import SearchConfig  # noqa: E402
from thickets.randopt.ensemble import ensemble, majority_vote  # noqa: E402
from thickets.errors import ThicketsError  # noqa: E402
from thickets.ship.export import export_candidate, export_spec, rebuild  # noqa: E402
from thickets.noise import ParamFilter, PerturbationSpec  # noqa: E402
from thickets.randopt.search import search  # noqa: E402
from thickets.tasks import get_task, register_task  # noqa: E402

__all__ = ["ParamFilter", "PerturbationSpec", "SearchConfig", "ThicketsError", "ensemble", "export_candidate",
           "export_spec", "get_task", "majority_vote", "rebuild", "register_task", "search"]
