"""Asynchronous local SGD (A-LSGD)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine import arguments
from asyncfl.engine.base import AsyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import GRADIENT
from asyncfl.strategies.blocks import checked_lr, default_server_lr, gradient_step
from asyncfl.strategies.registry import async_settings, register, server_lr


class GradientStepRule:
    r"""Step at once on each worker's accumulated gradient G_i (the sum of its K local
    gradients), with server learning rate gamma:

    .. math::
        w_{t+1} = w_t - \gamma G_i

    Example:
        >>> import numpy as np
        >>> GradientStepRule(0.1).fold({"x": np.array([1.0])}, {"x": np.array([2.0])}, 5, 0, 0)
        {'x': array([0.8])}
    """

    update_kind = GRADIENT
    state_fields = ()

    def __init__(self, server_lr: float) -> None:
        self.server_lr = checked_lr(server_lr, "server_lr")

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays:
        return gradient_step(global_arrays, update, self.server_lr)


class ALSGD(AsyncStrategy):
    """Asynchronous local SGD: every worker runs K local SGD iterations from the model it last
    received and pushes its accumulated gradient; the server steps at once
    (`GradientStepRule`) and sends the new model back to that worker only.

    The server step is gamma = `server_lr` x the clients' lr (train_config's "lr"), so
    `server_lr` = 1 adds exactly the worker's own displacement, as in FedBuff, where
    `server_lr` = 1 applies a delta as it is.

    Args:
        server_lr: gamma / lr; None means min(1, 1 / M) for M clients in flight
            (`blocks.default_server_lr`): M pushes then move the model about as far as one
            synchronous average of them would. Default: None.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...), `retry_backoff` and `staleness_cutoff`
            (Ringmaster's R: updates R or more versions old are discarded; `AsyncStrategy`).

    Example:
        >>> ALSGD(server_lr=0.5, concurrency=4).server_lr
        0.5
    """

    reply_kind = GRADIENT
    step_setting = "server_lr (run config: server-lr, gamma = lr x server-lr)"

    def __init__(self, server_lr: float | None = None, concurrency: int = 0,
                 **options: Any) -> None:
        super().__init__(concurrency, **options)
        self.server_lr = arguments.optional_positive("server_lr", server_lr)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> GradientStepRule:
        if parts is None:
            return GradientStepRule(self.server_lr or 1.0)
        lr = checked_lr(parts.client_lr, f"train_config's 'lr' ({type(self).__name__}'s "
                        "server step is server_lr x the clients' lr)")
        multiplier = (self.server_lr if self.server_lr is not None
                      else default_server_lr(1, self.in_flight(parts)))
        return GradientStepRule(multiplier * lr)


@register("alsgd", ALSGD)
def alsgd_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A-LSGD's constructor arguments from a validated run config."""
    return {**async_settings(config), "server_lr": server_lr(config)}
