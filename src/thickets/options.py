"""Fields of the config dataclasses that the command line is generated from (see cli/args.py).

Each field carries its help text, and where the command line spells it differently its flag
("--sigma" for `sigmas`) and how a flag's text becomes the value (comma-separated lists). The
dataclass is the single place a setting, its default and its documentation are written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from typing import Any

from thickets.errors import ThicketsError


def option(
    default: Any = ...,
    help: str = "",
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    show: Callable[[Any], str] | None = None,
    cli: bool = True,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """A dataclass field with what the command line needs; `...` as default: required. `bounds` (lo, hi):
    the finite range a number must lie in, checked by `check_bounds`."""
    metadata = {
        "help": help,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "show": show,
        "cli": cli,
        "bounds": bounds,
    }
    if default is ...:
        return field(metadata=metadata)
    if isinstance(default, (list, dict, set)):
        raise TypeError("give mutable defaults as tuples")
    return field(default=default, metadata=metadata)


def flag_name(f: Any) -> str:
    """The command-line spelling of a dataclass field."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def check_bounds(config: Any) -> None:
    """Every field with `bounds` holds a finite number within them, or one line naming the flag: inf, nan,
    1e9 epochs and a seed of -1 are refused before anything runs or is written."""
    for f in fields(config):
        bounds = f.metadata.get("bounds")
        if bounds is None:
            continue
        lo, hi = bounds
        value = getattr(config, f.name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and lo <= value <= hi):
            span = f"{lo:,} to {hi:,}" if isinstance(lo, int) and isinstance(hi, int) else f"{lo:,g} to {hi:,g}"
            raise ThicketsError(f"{flag_name(f)} must be a number from {span}, got {value!r}")


def parse_floats(text: str, what: str = "value") -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ThicketsError(f"{what} must be numbers separated by commas, got {text!r}") from None


def parse_ints(text: str, what: str = "value") -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ThicketsError(f"{what} must be integers separated by commas, got {text!r}") from None


def parse_patterns(text: str, what: str = "value") -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def commas(value: Any) -> str:
    """How a list default is shown and written back: comma-separated."""
    return ",".join(map(str, value))


#: the range of every seed thickets takes: derive_seed mixes it as text, numpy's generators take 64 bits
SEEDS = (0, 2**62 - 1)
#: the largest learning rate or step size any command takes: far above any that trains
MAX_RATE = 10.0
