"""FedSGD with gradients: clients send gradients, the server takes the step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine import arguments
from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import BATCH_SIZE, GRADIENT, LOCAL_STEPS
from asyncfl.strategies.blocks import checked_lr, gradient_step, weighted_average
from asyncfl.strategies.registry import register, server_lr, sync_settings


class FedSGDRule:
    r"""One server SGD step on the example-weighted mean of the clients' gradients, with
    step gamma (the clients' lr eta x `server_lr`):

    .. math::
        w_{t+1} = w_t - \gamma \sum_{i \in S_t} \frac{n_i}{n} g_i

    Example:
        >>> import numpy as np
        >>> FedSGDRule(0.5).combine({"x": np.array([1.0])},
        ...                         [{"x": np.array([1.0])}, {"x": np.array([4.0])}], [2, 1])
        {'x': array([0.])}
    """

    update_kind = GRADIENT
    state_fields = ()

    def __init__(self, lr: float) -> None:
        self.lr = checked_lr(lr, "lr")

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return gradient_step(global_arrays, weighted_average(updates, num_examples), self.lr)


class FedSGD(SyncStrategy):
    """Federated SGD on gradients: each sampled client computes the gradient of its loss over
    its whole partition at the global model (`FedSGDRule`).

    Args:
        fraction_train: C, the fraction of the clients sampled per round. Default: 1.0.
        server_lr: gamma / lr, the server step as a multiple of the clients' lr
            (train_config's "lr"); None means 1, plain FedSGD. Default: None.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `round_timeout`, `min_train_nodes`
            (`SyncStrategy`).

    Example:
        >>> FedSGD(fraction_train=0.3).fixed_train_config
        {'local-steps': 1, 'batch-size': 0}
    """

    reply_kind = GRADIENT
    step_setting = "server_lr (run config: server-lr, gamma = lr x server-lr)"
    without_the_helper = "FedAvg"
    fixed_train_config = {LOCAL_STEPS: 1, BATCH_SIZE: 0}

    def __init__(self, fraction_train: float = 1.0, *, server_lr: float | None = None,
                 **options: Any) -> None:
        super().__init__(fraction_train, **options)
        self.server_lr = arguments.optional_positive("server_lr", server_lr)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> FedSGDRule:
        multiplier = self.server_lr if self.server_lr is not None else 1.0
        if parts is None:
            return FedSGDRule(multiplier)
        lr = checked_lr(parts.client_lr, "train_config's 'lr' (FedSGD's server step is "
                        "server_lr x the clients' lr)")
        return FedSGDRule(multiplier * lr)


@register("fedsgd", FedSGD)
def fedsgd_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedSGD's constructor arguments from a validated run config."""
    return {**sync_settings(config), "server_lr": server_lr(config)}
