"""The checking toolkit every study-file section uses: typed values, known keys, expanded paths.

A failed check raises `SpecError` whose message starts with the field path
(``search_space.lr_new.low: must be > 0 with log: true, got 0``); the loader prefixes the file.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Iterable
from typing import Any

from trainer.config import TrainConfig


class SpecError(ValueError):
    """A study file that cannot run; the message starts with the file and the field path."""


FIELD_HINTS = typing.get_type_hints(TrainConfig)
_WANT = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_type(path: str, value: Any, hint: Any) -> Any:
    """`value` as `hint` wants it (an int is fine where a float is wanted; a bool is not an int;
    NaN and infinities are not numbers)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is float and is_number(value):
        return float(value)
    if hint is int and is_number(value) and isinstance(value, int):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        if not value.strip():
            raise SpecError(f"{path}: must not be empty")
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if items and all(is_number(v) for v in items):
            return tuple(float(v) for v in items)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    want = _WANT.get(hint, "a list of numbers" if origin is tuple else "a mapping")
    raise SpecError(
        f"{path}: must be {want}{' or null' if optional else ''}, got {describe(value)}"
    )


def check_keys(path: str, raw: dict, known: Iterable[str], what: str = "key") -> None:
    known = list(known)
    for key in raw:
        if key not in known:
            where = f"{path}.{key}" if path != "top level" else str(key)
            raise SpecError(f"{where}: unknown {what}; known: {', '.join(known) or '(none)'}")


def mapping(path: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a mapping, got {describe(raw)}")
    return raw


def expand(path: str, value: str, user: bool = True) -> str:
    """`~` (with `user`) and `$VARS` expanded; an unset variable is an error, not a literal `$X`."""
    out = os.path.expandvars(os.path.expanduser(value) if user else value)
    unset = re.search(r"\$\{?(\w+)", out)
    if unset:
        raise SpecError(f"{path}: environment variable ${unset.group(1)} is not set (in {value!r})")
    return out
