"""One exception type for mistakes a user can fix; the CLI turns it into one line and exit 2."""


class ThicketsError(Exception):
    """Bad input or a refused operation, with a message a user can act on."""


class SpecError(ThicketsError, ValueError):
    """A perturbation spec that cannot be (a seed, sigma or strategy out of range)."""
