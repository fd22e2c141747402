"""FedAvg (McMahan et al., 2017)."""

from __future__ import annotations

import numpy as np

from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.utils import weighted_average


class FedAvg(SyncStrategy):
    r"""Federated averaging.

    Each sampled client runs E epochs of minibatch SGD (batch B) from the global model w_t and
    returns its weights; the server averages them by the clients' example counts:

    .. math::
        w_{t+1} = \sum_{i \in S_t} \frac{n_i}{n} w_i, \qquad n = \sum_{i \in S_t} n_i
    """

    reply_kind = "weights"

    def combine(
        self,
        global_arrays: dict[str, np.ndarray],
        client_arrays: list[dict[str, np.ndarray]],
        weights: list[float],
    ) -> dict[str, np.ndarray]:
        return weighted_average(client_arrays, weights)
