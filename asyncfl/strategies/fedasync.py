"""FedAsync: asynchronous federated optimization (Xie et al., 2019)."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.async_base import AsyncStrategy
from asyncfl.strategies.staleness import StalenessFn, polynomial_default


class FedAsync(AsyncStrategy):
    r"""Mix every arriving client model into the global model.

    A client that started from version tau returns its model w_i; at server version t:

    .. math::
        \alpha_t = a \, s(t - \tau), \qquad w \leftarrow (1 - \alpha_t) w + \alpha_t w_i

    a is the same for every update (it is not decayed or compounded over time).
    """

    reply_kind = "weights"

    def __init__(
        self, mixing: float = 0.5, concurrency: int = 0, *,
        staleness: StalenessFn | None = None, **kwargs,
    ) -> None:
        super().__init__(concurrency, **kwargs)
        if not 0 < mixing <= 1:
            raise ValueError(f"mixing must be in (0, 1], got {mixing}")
        self.mixing = mixing
        self.staleness = staleness if staleness is not None else polynomial_default

    def apply(
        self, global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray],
        num_examples: float, staleness: int, base: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        alpha = self.mixing * self.staleness(staleness)
        if alpha == 1.0:
            return {key: value.copy() for key, value in update.items()}
        return {
            key: ((1.0 - alpha) * value + alpha * update[key]).astype(value.dtype)
            for key, value in global_arrays.items()
        }
