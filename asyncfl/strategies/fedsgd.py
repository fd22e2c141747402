"""FedSGD with gradients: clients send gradients, the server takes the step."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.utils import gradient_step, weighted_average


class FedSGD(SyncStrategy):
    r"""Federated SGD on gradients.

    Each sampled client computes the gradient g_i of its loss over its whole partition at the
    global model w_t; the server steps with the client learning rate eta:

    .. math::
        w_{t+1} = w_t - \eta \sum_{i \in S_t} \frac{n_i}{n} g_i
    """

    reply_kind = "gradient"
    fixed_train_config = {"local-steps": 1, "batch-size": 0}

    def __init__(self, fraction_train: float = 1.0, *, lr: float, **kwargs) -> None:
        super().__init__(fraction_train, **kwargs)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr

    def combine(
        self,
        global_arrays: dict[str, np.ndarray],
        client_arrays: list[dict[str, np.ndarray]],
        weights: list[float],
    ) -> dict[str, np.ndarray]:
        return gradient_step(global_arrays, weighted_average(client_arrays, weights), self.lr)
