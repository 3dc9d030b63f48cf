"""The release, recorded in every run folder and recipe (kept apart so no module imports the package root)."""

__version__ = "0.1.0"
