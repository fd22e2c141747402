"""Local SGD (LSGD): synchronous local iterations on every worker, then model averaging."""

from __future__ import annotations

from asyncfl.protocol import WEIGHTS
from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.runner import Arrays
from asyncfl.strategies.utils import weighted_average


class LSGDRule:
    r"""The plain mean of the workers' models, each worker counting equally:

    .. math::
        w_{t+1} = \frac{1}{n} \sum_{i=1}^{n} w_i
    """

    update_kind = WEIGHTS
    state_fields = ()

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return weighted_average(updates, [1.0] * len(updates))


class LSGD(SyncStrategy):
    """Synchronous local SGD: every round all workers run K local SGD iterations from the
    global model (K = `local-steps`) and the server averages them (`LSGDRule`)."""

    def __init__(self, fraction_train: float = 1.0, **options) -> None:
        super().__init__(fraction_train, **options)
        self.rule = LSGDRule()
