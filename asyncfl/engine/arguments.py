"""Checks of constructor arguments, where they are given: a wrong type is a TypeError and a
value out of range a ValueError, each naming the argument and what it allows."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from typing import Any, TypeVar

T = TypeVar("T")


def integer(name: str, value: Any, minimum: int = 0) -> int:
    """An int >= `minimum` (not a bool, not a float such as 2.5 or 2.0)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def number(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> float:
    """A finite real number for which `ok` holds; `allowed` says which (e.g. 'a number > 0')."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not (math.isfinite(value) and ok(float(value))):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return number(name, value, "a number > 0", lambda x: x > 0)


def non_negative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    return number(name, value, "a number >= 0", lambda x: x >= 0)


def optional_positive(name: str, value: Any) -> float | None:
    """None (the algorithm's default) or a finite number > 0."""
    return None if value is None else number(
        name, value, "None (the default) or a number > 0", lambda x: x > 0)


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of the named `choices`."""
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                         f"got {value!r}")
    return value


def instance(name: str, value: Any, cls: type[T], allowed: str) -> T:
    """An instance of `cls`; `allowed` says what else may be given (e.g. a name)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    return value
