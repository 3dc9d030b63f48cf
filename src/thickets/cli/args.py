"""The command line, generated from the config dataclasses: one flag per field, its help on the field.

transformers' HfArgumentParser (which TRL builds on) reads dataclasses too, but it spells a tuple
field as a space-separated list (`--sigmas 1e-3 2e-3`), where thickets' command line has always
taken a comma-separated one (`--sigma 1e-3,2e-3`), and it cannot rename a flag; this is the ~100
lines that keep the command line as it was. Every flag defaults to "not given", so a value comes
from the flag, else from `--config FILE` (JSON or YAML, keys as the fields are named), else from
the dataclass: flags override the file, and the file overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.options import flag_name as flag_of


def _cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) is not False and "help" in f.metadata]


def _default_text(f: dataclasses.Field[Any]) -> str:
    choices = f.metadata.get("choices")
    among = f"; one of {', '.join(choices)}" if choices else ""
    if f.default is dataclasses.MISSING:
        return f" (required{among})"
    show = f.metadata.get("show") or str
    if f.default is None or f.default == () or isinstance(f.default, bool):
        return f" ({among[2:]})" if among else ""
    return f" (default: {show(f.default)}{among})"


def add_fields(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of `cls` that has help text; none of them sets a default (see `values`)."""
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        if f.name in skip:
            continue
        help_text = f.metadata["help"] + _default_text(f)
        kind = hints[f.name]
        if kind is bool:
            name = flag_of(f).removeprefix("--")
            flag, action = (f"--no-{name}", "store_false") if f.default is True else (f"--{name}", "store_true")
            parser.add_argument(flag, dest=f.name, action=action, default=argparse.SUPPRESS, help=help_text)
            continue
        if f.metadata.get("parse"):
            value_type: Any = str  # turned into the field's value by `values`, where errors are one line
        else:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            value_type = args[0] if args else kind
        parser.add_argument(
            flag_of(f),
            dest=f.name,
            type=value_type,
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            help=help_text,
            metavar=f.name.upper(),
        )


def values(namespace: argparse.Namespace, cls: type, file: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields of `cls` given on the command line, over those in the config file: a dict for cls(**...).
    A field neither gives keeps the dataclass default; a required one missing from both is refused."""
    given = vars(namespace)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            value = given[f.name]
            parse = f.metadata.get("parse")
            out[f.name] = parse(value, flag_of(f)) if parse and isinstance(value, str) else value
        elif file is not None and f.name in file:
            out[f.name] = _from_file(f, hints[f.name], file[f.name])
        elif f.default is dataclasses.MISSING and f.metadata.get("cli", True) is not False:
            raise ThicketsError(f"{flag_of(f)} is required")
    return out


def _from_file(f: dataclasses.Field[Any], hint: Any, value: Any) -> Any:
    """A value from a config file as the field's type, or one line saying what the field wants: JSON and
    YAML have their own types, and a field's dataclass would take a string for a number unseen."""
    what = f"{f.name} in --config"
    parse = f.metadata.get("parse")
    if parse is not None and isinstance(value, str):
        return parse(value, what)
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is not tuple else []
    base = kinds[0] if kinds else hint
    if value is None and type(None) in typing.get_args(hint):
        return None
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if isinstance(value, (list, tuple)) and all(_is(item, v) for v in value):
            return tuple(float(v) if item is float else v for v in value)
        raise ThicketsError(f"{what} must be a list of {item.__name__} values, got {value!r}")
    if _is(base, value):
        return float(value) if base is float else value
    raise ThicketsError(
        f"{what} must be {'an integer' if base is int else 'a ' + getattr(base, '__name__', str(base))}, got {value!r}"
    )


def _is(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def read_config_file(path: str, allowed: Sequence[type]) -> dict[str, Any]:
    """The settings in a JSON or YAML file, checked against the fields of the command's dataclasses."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ThicketsError(f"cannot read --config {path}: {e}") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json and yaml raise their own kinds for a malformed file
        raise ThicketsError(
            f"--config {path} is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
            f"{' '.join(str(e).split())[:200]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThicketsError(f"--config {path} must hold a mapping of settings, got {type(data).__name__}")
    known = {f.name for cls in allowed for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ThicketsError(
            f"--config {path} has unknown settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return data
