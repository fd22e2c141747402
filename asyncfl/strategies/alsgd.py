"""Asynchronous local SGD (A-LSGD)."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.async_base import AsyncStrategy
from asyncfl.strategies.utils import gradient_step


class ALSGD(AsyncStrategy):
    r"""Asynchronous local SGD.

    Every worker runs K local SGD iterations from the model it last received and pushes its
    accumulated gradient G_i = sum_k g_k; the server steps at once and sends the new model
    back to that worker only:

    .. math::
        w_{t+1} = w_t - \gamma G_i

    With gamma equal to the workers' learning rate (the default in the app: `lr` x
    `server-lr` with `server-lr` = 1) the server adds exactly the worker's own displacement.
    """

    reply_kind = "gradient"

    def __init__(self, server_lr: float, concurrency: int = 0, **kwargs) -> None:
        super().__init__(concurrency, **kwargs)
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def apply(
        self, global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray],
        num_examples: float, staleness: int, base: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        return gradient_step(global_arrays, update, self.server_lr)
