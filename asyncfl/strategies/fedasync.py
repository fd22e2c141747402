"""FedAsync: asynchronous federated optimization (Xie et al., 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine import arguments
from asyncfl.engine.base import AsyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.blocks import StalenessFn, staleness_arg, staleness_setting
from asyncfl.strategies.registry import async_settings, register


class FedAsyncRule:
    r"""Mix every arriving client model into the global model. A client that started from
    version tau returns w_i; at server version t:

    .. math::
        \alpha_t = a \, s(t - \tau), \qquad w \leftarrow (1 - \alpha_t) w + \alpha_t w_i

    a is the same for every update (it is not decayed or compounded over time).

    Example:
        >>> import numpy as np
        >>> rule = FedAsyncRule(0.5, staleness=lambda tau: 1 / (1 + tau))
        >>> rule.fold({"x": np.array([0.0])}, {"x": np.array([4.0])}, 10, 1, 0)  # a s = 1/4
        {'x': array([1.])}
    """

    update_kind = WEIGHTS
    state_fields = ()

    def __init__(self, mixing: float, staleness: StalenessFn) -> None:
        self.mixing = arguments.number("mixing", mixing, "a number in (0, 1]",
                                       lambda a: 0 < a <= 1)
        self.staleness = staleness

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays:
        alpha = self.mixing * self.staleness(staleness)
        if alpha == 1.0:
            return {key: value.copy() for key, value in update.items()}
        return {key: ((1.0 - alpha) * value + alpha * update[key]).astype(value.dtype)
                for key, value in global_arrays.items()}


class FedAsync(AsyncStrategy):
    """FedAsync: clients train from the newest model and return weights, mixed in at once
    (`FedAsyncRule`).

    Args:
        mixing: a, the mixing weight of a fresh update, in (0, 1]. Default: 0.5.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        staleness: s(tau), a name ("constant", "polynomial", "hinge", with a = 0.5, b = 4)
            or a function of the staleness; None means polynomial with a = 0.5.
            Default: None.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...), `retry_backoff` and `staleness_cutoff`
            (Ringmaster's R: updates R or more versions old are discarded; `AsyncStrategy`).

    Example:
        >>> FedAsync(mixing=0.6, staleness="constant").rule.mixing
        0.6
    """

    reply_kind = WEIGHTS

    def __init__(self, mixing: float = 0.5, concurrency: int = 0, *,
                 staleness: str | StalenessFn | None = None, **options: Any) -> None:
        super().__init__(concurrency, **options)
        self.mixing = mixing
        self.staleness = staleness_arg(staleness)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> FedAsyncRule:
        return FedAsyncRule(self.mixing, self.staleness)


@register("fedasync", FedAsync)
def fedasync_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedAsync's constructor arguments from a validated run config."""
    return {**async_settings(config), "mixing": config["mixing"],
            "staleness": staleness_setting(config)}
