"""Local SGD (LSGD): synchronous local iterations on every worker, then model averaging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.blocks import weighted_average
from asyncfl.strategies.registry import register, sync_settings


class LSGDRule:
    r"""The plain mean of the workers' models, each worker counting equally:

    .. math::
        w_{t+1} = \frac{1}{n} \sum_{i=1}^{n} w_i

    Example:
        >>> import numpy as np
        >>> LSGDRule().combine({"x": np.array([0.0])},
        ...                    [{"x": np.array([1.0])}, {"x": np.array([4.0])}], [2, 1])
        {'x': array([2.5])}
    """

    update_kind = WEIGHTS
    state_fields = ()

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return weighted_average(updates, [1.0] * len(updates))


class LSGD(SyncStrategy):
    """Synchronous local SGD: every round all workers run K local SGD iterations from the
    global model (K = `local-steps`) and the server averages them (`LSGDRule`).

    Args:
        fraction_train: C, the fraction of the workers sampled per round. Default: 1.0.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `round_timeout`, `min_train_nodes`
            (`SyncStrategy`).

    Example:
        >>> LSGD().fraction_train
        1.0
    """

    without_the_helper = "FedAvg"

    def __init__(self, fraction_train: float = 1.0, **options: Any) -> None:
        super().__init__(fraction_train, **options)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> LSGDRule:
        return LSGDRule()


@register("lsgd", LSGD)
def lsgd_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """LSGD's constructor arguments from a validated run config."""
    return sync_settings(config)
