"""Asynchronous local SGD (A-LSGD)."""

from __future__ import annotations

from asyncfl.protocol import GRADIENT
from asyncfl.strategies.async_runner import AsyncRunner
from asyncfl.strategies.base import AsyncStrategy
from asyncfl.strategies.runner import Arrays, RunParts
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

    With gamma equal to the workers' learning rate the server adds exactly the worker's own
    displacement. Without a `server_lr`, gamma = lr x min(1, 1 / M) with train_config's `lr`
    and M clients in flight, as the app's `server-lr` = 0 gives: M pushes then move the model
    about as far as one synchronous average of them would.
    """

    reply_kind = GRADIENT
    step_setting = "server_lr (run config: server-lr, gamma = lr x server-lr)"

    def __init__(self, server_lr: float | None = None, concurrency: int = 0,
                 **options) -> None:
        super().__init__(concurrency, **options)
        self.server_lr = server_lr
        self.rule = GradientStepRule(server_lr or 1.0)

    def runner(self, parts: RunParts) -> AsyncRunner:
        if self.server_lr is None:
            lr = checked_lr(parts.client_lr,
                            f"{type(self).__name__}'s server_lr (or train_config's 'lr')")
            self.rule.server_lr = lr * min(1.0, 1 / self.in_flight(parts))
        return super().runner(parts)
