"""Local SGD (LSGD): synchronous local iterations on every worker, then model averaging."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.utils import weighted_average


class LSGD(SyncStrategy):
    r"""Synchronous local SGD.

    Every round all n workers run K local SGD iterations from the global model w_t (K =
    `local-steps`) and the server averages their models, each worker counting equally:

    .. math::
        w_{t+1} = \frac{1}{n} \sum_{i=1}^{n} w_i
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(1.0, **kwargs)

    def combine(
        self,
        global_arrays: dict[str, np.ndarray],
        client_arrays: list[dict[str, np.ndarray]],
        weights: list[float],
    ) -> dict[str, np.ndarray]:
        return weighted_average(client_arrays, [1.0] * len(client_arrays))
