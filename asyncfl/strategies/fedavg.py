"""FedAvg (McMahan et al., 2017)."""

from __future__ import annotations

from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.runner import Arrays
from asyncfl.strategies.utils import weighted_average


class FedAvgRule:
    r"""Federated averaging: the clients' models weighted by their example counts,

    .. math::
        w_{t+1} = \sum_{i \in S_t} \frac{n_i}{n} w_i, \qquad n = \sum_{i \in S_t} n_i
    """

    update_kind = WEIGHTS
    state_fields = ()

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return weighted_average(updates, num_examples)


class FedAvg(SyncStrategy):
    """Federated averaging: each sampled client runs E epochs (or K steps) of minibatch SGD
    from the global model and returns its weights; the server applies `FedAvgRule`."""

    reply_kind = WEIGHTS

    def __init__(self, fraction_train: float = 1.0, **options) -> None:
        super().__init__(fraction_train, **options)
        self.rule = FedAvgRule()
