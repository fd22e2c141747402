"""asyncfl: federated learning with clients of unequal speed, as Flower strategies and apps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncfl.config import ConfigError

if TYPE_CHECKING:
    from asyncfl.tools.inline import SimulationResult

__version__ = "0.1.0"


def simulate(**kwargs) -> SimulationResult:
    """Run a whole federated run (see `asyncfl.tools.inline.simulate`)."""
    from asyncfl.tools.inline import simulate as run

    return run(**kwargs)


def __getattr__(name: str):
    if name == "SimulationResult":
        from asyncfl.tools.inline import SimulationResult

        return SimulationResult
    raise AttributeError(name)


__all__ = ["ConfigError", "SimulationResult", "__version__", "simulate"]
