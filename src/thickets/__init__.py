"""thickets: gradient-free post-training by RandOpt (random perturbations, top-K majority vote)."""

__version__ = "0.1.0"
