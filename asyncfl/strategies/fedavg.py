"""FedAvg (McMahan et al., 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.blocks import weighted_average
from asyncfl.strategies.registry import register, sync_settings


class FedAvgRule:
    r"""Federated averaging: the clients' models weighted by their example counts,

    .. math::
        w_{t+1} = \sum_{i \in S_t} \frac{n_i}{n} w_i, \qquad n = \sum_{i \in S_t} n_i

    Example:
        >>> import numpy as np
        >>> FedAvgRule().combine({"x": np.array([0.0])},
        ...                      [{"x": np.array([1.0])}, {"x": np.array([4.0])}], [2, 1])
        {'x': array([2.])}
    """

    update_kind = WEIGHTS
    state_fields = ()

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return weighted_average(updates, num_examples)


class FedAvg(SyncStrategy):
    """Federated averaging: each sampled client runs E epochs (or K steps) of minibatch SGD
    from the global model and returns its weights; the server applies `FedAvgRule`.

    Args:
        fraction_train: C, the fraction of the clients sampled per round. Default: 1.0.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `round_timeout`, `min_train_nodes`
            (`SyncStrategy`).

    Example:
        >>> FedAvg(fraction_train=0.5).fraction_train
        0.5
    """

    reply_kind = WEIGHTS

    def __init__(self, fraction_train: float = 1.0, **options: Any) -> None:
        super().__init__(fraction_train, **options)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> FedAvgRule:
        return FedAvgRule()


@register("fedavg", FedAvg)
def fedavg_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedAvg's constructor arguments from a validated run config."""
    return sync_settings(config)
