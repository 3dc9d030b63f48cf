"""The `thickets` command line (see commands.py)."""

from thickets.cli.commands import main

__all__ = ["main"]
