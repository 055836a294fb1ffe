"""The one validator of typed dataclasses built from user input (run configs, grid spec sections).

Values are checked against the field's type hint, never cast: an int is accepted where a float
is expected (YAML's ``1`` for ``1.0``), a whole float where an int is expected; nothing else.
Errors are ``ConfigError``s naming the field path and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from .errors import ConfigError, shown

INT_LIMIT = 2**63


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(hint: Any, where: str, value: Any, source: str | None) -> Any:
    """``value`` checked against ``hint`` (``int | None``, ``int | str``, ``bool | str``, ``float``, ``str``,
    ``bool``, ``tuple[float, float]``, ``dict[str, Any]``, ``Any``)."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be null", source)
    if isinstance(base, types.UnionType):  # e.g. ``int | str``: the value's own type picks the member
        kinds = [a for a in typing.get_args(base) if a is not type(None)]
        if isinstance(value, str) or isinstance(value, bool) and bool in kinds:  # bool before int: True is an int
            kind = type(value)
        else:
            kind = next((k for k in kinds if k in (int, float)), None)
        if kind not in kinds:
            raise ConfigError(f"{where}: expected {' or '.join(k.__name__ for k in kinds)}, got {shown(value)}",
                              source)
        return check_value(kind, where, value, source)
    origin = typing.get_origin(base)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(typing.get_args(base)):
            raise ConfigError(f"{where}: expected a list of {len(typing.get_args(base))} numbers, got {shown(value)}",
                              source)
        return tuple(number(where, v, float, source) for v in value)
    if origin is dict or base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}", source)
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}", source)
        return value
    if base in (int, float):
        return number(where, value, base, source)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}", source)
        return value
    if base is Any:
        return value
    raise AssertionError(f"unhandled type {hint} for {where}")


def number(where: str, value: Any, kind: type, source: str | None) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {shown(value)}", source)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}", source)
        return int(int64(where, value, source))
    try:
        value = float(value)  # an int past a float's range (1 and 400 zeros) overflows here
    except OverflowError:
        raise ConfigError(f"{where}: {shown(value)} is out of a float's range", source) from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {shown(value)}", source)
    return value


def int64(where: str, value: int | float, source: str | None) -> int | float:
    """``value`` when it fits an int64 (parquet's integer columns), else a ``ConfigError``."""
    if not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(f"{where}: {shown(value)} is out of range (|value| < 2**63)", source)
    return value


def checked_fields(cls: type, d: dict[str, Any], source: str | None, prefix: str = "") -> dict[str, Any]:
    """``d``'s values checked against ``cls``'s fields; unknown keys name the allowed ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            raise ConfigError(f"unknown key {prefix + key!r} (allowed: {', '.join(names)})", source)
    h = hints(cls)
    return {k: check_value(h[k], f"{prefix}{k}", v, source) for k, v in d.items()}
