"""The running mean of seed 000: the estimate is the mean of every value received so far."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncfl.engine.base import AsyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.registry import async_settings, register


class RunningMeanRule:
    r"""After the v-th arrival, with x_j the j-th value received (a fast client counts each
    time it reports):

    .. math::
        \hat\mu_v = \frac{1}{v} \sum_{j=1}^{v} x_j

    The sum is kept in float64, so the estimate is exact to float64 rounding at every version.

    Example:
        >>> import numpy as np
        >>> rule, w = RunningMeanRule(), {"x": np.array([0.0])}
        >>> w = rule.fold(w, {"x": np.array([2.0])}, 1, 0, 0)
        >>> rule.fold(w, {"x": np.array([6.0])}, 1, 0, 1)
        {'x': array([4.])}
    """

    update_kind = WEIGHTS
    state_fields = ("total", "count")

    def __init__(self) -> None:
        self.total: Arrays = {}
        self.count = 0

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays:
        self.count += 1
        new = {}
        for key, value in update.items():
            self.total[key] = self.total.get(key, 0.0) + value.astype(np.float64)
            new[key] = (self.total[key] / self.count).astype(global_arrays[key].dtype)
        return new


class RunningMean(AsyncStrategy):
    """Asynchronous averaging of client values, repeats included (`RunningMeanRule`).

    Args:
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `retry_backoff` (`AsyncStrategy`).

    Example:
        >>> RunningMean(concurrency=5).concurrency
        5
    """

    reply_kind = WEIGHTS
    #: the replies are the clients' values: values far from the estimate are data, not
    #: outliers (a value past the divergence limit still is one)
    median_outliers = False

    def __init__(self, concurrency: int = 0, **options: Any) -> None:
        super().__init__(concurrency, **options)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> RunningMeanRule:
        return RunningMeanRule()


@register("running-mean", RunningMean)
def running_mean_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """RunningMean's constructor arguments from a validated run config."""
    return async_settings(config)
