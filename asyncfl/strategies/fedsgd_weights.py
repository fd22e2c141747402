"""FedSGD with weights: clients take the one full-partition step, the server averages."""

from __future__ import annotations

from asyncfl.protocol import BATCH_SIZE, LOCAL_STEPS
from asyncfl.strategies.fedavg import FedAvg, fedavg_settings
from asyncfl.strategies.registry import register


class FedSGDWeights(FedAvg):
    r"""FedSGD expressed as FedAvg with a single full-batch step.

    Each sampled client takes one SGD step over its whole partition, w_i = w_t - eta g_i, and
    returns w_i; the server averages by example counts (`FedAvgRule`):

    .. math::
        w_{t+1} = \sum_i \frac{n_i}{n} (w_t - \eta g_i) = w_t - \eta \sum_i \frac{n_i}{n} g_i

    which equals :class:`FedSGD` up to float rounding (plain SGD, no momentum or weight decay,
    the same sampled clients).

    Args:
        fraction_train: C, the fraction of the clients sampled per round. Default: 1.0.
        **options: as for `FedAvg`.

    Example:
        >>> FedSGDWeights().fixed_train_config
        {'local-steps': 1, 'batch-size': 0}
    """

    without_the_helper = "FedAvg"
    fixed_train_config = {LOCAL_STEPS: 1, BATCH_SIZE: 0}


register("fedsgd-weights", FedSGDWeights)(fedavg_settings)
