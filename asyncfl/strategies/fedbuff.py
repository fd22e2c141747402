"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022)."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.async_base import AsyncStrategy
from asyncfl.strategies.staleness import StalenessFn, polynomial_default


class FedBuff(AsyncStrategy):
    r"""Buffered asynchronous aggregation.

    M clients train at once; each runs Q local steps from the version tau_i it received and
    returns its delta Delta_i = w_i - w_{tau_i}. With `client_returns="weights"` (any ClientApp
    that follows Flower's FedAvg contract) the server computes the delta itself from the
    version the client started from, which it keeps while that client is in flight.
    The server buffers staleness-weighted deltas and, every K
    arrivals, steps with server learning rate gamma and momentum beta:

    .. math::
        \bar\Delta = \frac{1}{K} \sum_{i=1}^{K} s(t - \tau_i) \Delta_i, \qquad
        m \leftarrow \beta m + \bar\Delta, \qquad w \leftarrow w + \gamma m
    """

    checkpoint_fields = ("_buffer", "_count", "_momentum")

    def __init__(
        self,
        buffer_size: int = 10,
        concurrency: int = 0,
        *,
        client_returns: str = "weights",
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        staleness: StalenessFn | None = None,
        **kwargs,
    ) -> None:
        super().__init__(concurrency, **kwargs)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if not 0 <= server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        if client_returns not in ("weights", "delta"):
            raise ValueError(f"client_returns must be 'weights' or 'delta', got {client_returns!r}")
        self.reply_kind = client_returns
        self.needs_base = client_returns == "weights"
        self.buffer_size = buffer_size
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.staleness = staleness if staleness is not None else polynomial_default
        self._buffer: dict[str, np.ndarray] = {}
        self._count = 0
        self._momentum: dict[str, np.ndarray] = {}

    def apply(
        self, global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray],
        num_examples: float, staleness: int, base: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        weight = self.staleness(staleness)
        for key, value in update.items():
            delta = value.astype(np.float64) - base[key] if base is not None else value
            if key not in self._buffer:
                self._buffer[key] = np.zeros(delta.shape, dtype=np.float64)
            self._buffer[key] += weight * delta
        self._count += 1
        if self._count < self.buffer_size:
            return None
        new = {}
        for key, value in global_arrays.items():
            step = self._buffer[key] / self.buffer_size
            if self.server_momentum > 0:
                step = self._momentum.get(key, 0.0) * self.server_momentum + step
                self._momentum[key] = step
            new[key] = (value + self.server_lr * step).astype(value.dtype)
        self._buffer, self._count = {}, 0
        return new
