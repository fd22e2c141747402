"""The running mean of seed 000: the estimate is the mean of every value received so far."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.async_base import AsyncStrategy


class RunningMean(AsyncStrategy):
    r"""Asynchronous averaging of client values, repeats included.

    After the v-th arrival, with x_j the j-th value received (a fast client counts each time
    it reports):

    .. math::
        \hat\mu_v = \frac{1}{v} \sum_{j=1}^{v} x_j

    The sum is kept in float64, so the estimate is exact to float64 rounding at every version.
    """

    reply_kind = "weights"
    checkpoint_fields = ("_sum", "_count")

    def __init__(self, concurrency: int = 0, **kwargs) -> None:
        super().__init__(concurrency, **kwargs)
        self._sum: dict[str, np.ndarray] = {}
        self._count = 0

    def apply(
        self, global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray],
        num_examples: float, staleness: int, base: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        self._count += 1
        new = {}
        for key, value in update.items():
            self._sum[key] = self._sum.get(key, 0.0) + value.astype(np.float64)
            new[key] = (self._sum[key] / self._count).astype(global_arrays[key].dtype)
        return new
