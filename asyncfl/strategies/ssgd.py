"""Synchronous SGD (SSGD): LSGD with one local iteration."""

from __future__ import annotations

from asyncfl.protocol import LOCAL_STEPS
from asyncfl.strategies.lsgd import LSGD


class SSGD(LSGD):
    r"""Synchronous SGD: every worker computes one minibatch gradient g_i at w_t and

    .. math::
        w_{t+1} = \frac{1}{n} \sum_i (w_t - \eta g_i) = w_t - \eta \frac{1}{n} \sum_i g_i
    """

    fixed_train_config = {LOCAL_STEPS: 1}
