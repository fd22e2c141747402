"""Asynchronous SGD (ASGD): A-LSGD with one local iteration."""

from __future__ import annotations

from asyncfl.protocol import LOCAL_STEPS
from asyncfl.strategies.alsgd import ALSGD, alsgd_settings
from asyncfl.strategies.registry import register


class ASGD(ALSGD):
    r"""Asynchronous SGD: a worker pushes one minibatch gradient g computed at the model it
    last received, and :math:`w \leftarrow w - \gamma g`, gamma = `server_lr` x lr.

    Args:
        server_lr: gamma / lr; None means min(1, 1 / M) (see `ALSGD`). Default: None.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        **options: as for `ALSGD`.

    Example:
        >>> ASGD(concurrency=2).fixed_train_config
        {'local-steps': 1}
    """

    fixed_train_config = {LOCAL_STEPS: 1}


register("asgd", ASGD)(alsgd_settings)
