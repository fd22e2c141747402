"""Asynchronous SGD (ASGD): A-LSGD with one local iteration."""

from __future__ import annotations

from asyncfl.protocol import LOCAL_STEPS
from asyncfl.strategies.alsgd import ALSGD


class ASGD(ALSGD):
    r"""Asynchronous SGD: a worker pushes one minibatch gradient g computed at the model it
    last received, and :math:`w \leftarrow w - \gamma g`."""

    fixed_train_config = {LOCAL_STEPS: 1}
