"""Fields of the config dataclasses that the command line is generated from (see cli/args.py).

Each field carries its help text, and where the command line spells it differently its flag
("--sigma" for `sigmas`) and how a flag's text becomes the value (comma-separated lists). The
dataclass is the single place a setting, its default and its documentation are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import field
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
) -> Any:
    """A dataclass field with what the command line needs; `...` as default: required."""
    metadata = {"help": help, "flag": flag, "parse": parse, "choices": choices, "show": show, "cli": cli}
    if default is ...:
        return field(metadata=metadata)
    if isinstance(default, (list, dict, set)):
        raise TypeError("give mutable defaults as tuples")
    return field(default=default, metadata=metadata)


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
