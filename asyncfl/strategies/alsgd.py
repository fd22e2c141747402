"""Asynchronous local SGD (A-LSGD)."""

from __future__ import annotations

from asyncfl.protocol import GRADIENT
from asyncfl.strategies.base import AsyncStrategy
from asyncfl.strategies.runner import Arrays
from asyncfl.strategies.utils import checked_lr, gradient_step


class GradientStepRule:
    r"""Step at once on each worker's accumulated gradient G_i (the sum of its K local
    gradients), with server learning rate gamma:

    .. math::
        w_{t+1} = w_t - \gamma G_i
    """

    update_kind = GRADIENT
    state_fields = ()

    def __init__(self, server_lr: float) -> None:
        self.server_lr = checked_lr(server_lr, "server_lr")

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays:
        return gradient_step(global_arrays, update, self.server_lr)


class ALSGD(AsyncStrategy):
    """Asynchronous local SGD: every worker runs K local SGD iterations from the model it last
    received and pushes its accumulated gradient; the server steps at once
    (`GradientStepRule`) and sends the new model back to that worker only.

    With gamma equal to the workers' learning rate (the default: `server_lr` None takes
    train_config's `lr`) the server adds exactly the worker's own displacement.
    """

    reply_kind = GRADIENT
    step_setting = "server_lr (run config: server-lr, gamma = lr x server-lr)"

    def __init__(self, server_lr: float | None = None, concurrency: int = 0,
                 **options) -> None:
        super().__init__(concurrency, **options)
        self.server_lr = server_lr
        self.rule = GradientStepRule(server_lr or 1.0)

    def use_client_lr(self, lr: float | None) -> None:
        if self.server_lr is None:
            self.rule.server_lr = checked_lr(
                lr, f"{type(self).__name__}'s server_lr (or train_config's 'lr')")
