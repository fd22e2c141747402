"""FedSGD with gradients: clients send gradients, the server takes the step."""

from __future__ import annotations

from asyncfl.protocol import BATCH_SIZE, GRADIENT, LOCAL_STEPS
from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.runner import Arrays, RunParts
from asyncfl.strategies.sync_runner import SyncRunner
from asyncfl.strategies.utils import checked_lr, gradient_step, weighted_average


class FedSGDRule:
    r"""One server SGD step on the example-weighted mean of the clients' gradients, with the
    client learning rate eta:

    .. math::
        w_{t+1} = w_t - \eta \sum_{i \in S_t} \frac{n_i}{n} g_i
    """

    update_kind = GRADIENT
    state_fields = ()

    def __init__(self, lr: float) -> None:
        self.lr = checked_lr(lr, "lr")

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        return gradient_step(global_arrays, weighted_average(updates, num_examples), self.lr)


class FedSGD(SyncStrategy):
    """Federated SGD on gradients: each sampled client computes the gradient of its loss over
    its whole partition at the global model (`FedSGDRule`)."""

    reply_kind = GRADIENT
    step_setting = "lr (FedSGD's server step)"
    fixed_train_config = {LOCAL_STEPS: 1, BATCH_SIZE: 0}

    def __init__(self, fraction_train: float = 1.0, *, lr: float | None = None,
                 **options) -> None:
        super().__init__(fraction_train, **options)
        self.lr = lr
        self.rule = FedSGDRule(lr or 1.0)

    def runner(self, parts: RunParts) -> SyncRunner:
        if self.lr is None:
            self.rule.lr = checked_lr(parts.client_lr, "FedSGD's lr (or train_config's 'lr')")
        return super().runner(parts)
