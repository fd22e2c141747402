"""Synchronous SGD (SSGD): LSGD with one local iteration."""

from __future__ import annotations

from asyncfl.protocol import LOCAL_STEPS
from asyncfl.strategies.lsgd import LSGD, lsgd_settings
from asyncfl.strategies.registry import register


class SSGD(LSGD):
    r"""Synchronous SGD: every worker computes one minibatch gradient g_i at w_t and

    .. math::
        w_{t+1} = \frac{1}{n} \sum_i (w_t - \eta g_i) = w_t - \eta \frac{1}{n} \sum_i g_i

    Args:
        fraction_train: C, the fraction of the workers sampled per round. Default: 1.0.
        **options: as for `LSGD`.

    Example:
        >>> SSGD().fixed_train_config
        {'local-steps': 1}
    """

    fixed_train_config = {LOCAL_STEPS: 1}


register("ssgd", SSGD)(lsgd_settings)
