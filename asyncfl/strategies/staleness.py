"""Staleness weights s(tau): how much an update computed tau versions ago still counts."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

StalenessFn = Callable[[int], float]

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def constant(tau: int) -> float:
    """s(tau) = 1: every update counts fully."""
    return 1.0


def polynomial(tau: int, a: float) -> float:
    """s(tau) = (1 + tau)^(-a)."""
    return (1.0 + tau) ** -a


def hinge(tau: int, a: float, b: float) -> float:
    """s(tau) = 1 if tau <= b, else 1 / (a (tau - b) + 1)."""
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


def staleness_function(name: str, a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """The named staleness function with its parameters bound."""
    if name == "constant":
        return constant
    if name == "polynomial":
        return partial(polynomial, a=a)
    if name == "hinge":
        return partial(hinge, a=a, b=b)
    raise ValueError(f"unknown staleness function {name!r}; choose one of {STALENESS_FUNCTIONS}")


#: FedBuff's default: polynomial with a = 0.5
polynomial_default: StalenessFn = partial(polynomial, a=0.5)
