"""FedStaleWeight: buffered asynchronous FL with fair aggregation by staleness reweighting
(Ma et al., 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA
from asyncfl.strategies.blocks import (
    BufferedStrategy,
    DeltaBuffer,
    ServerOptimizer,
    checked_size,
)
from asyncfl.strategies.registry import buffered_settings, register


class FedStaleWeightRule:
    r"""Weight each buffered delta by its client's average staleness, so that a client that
    reports r times less often (and so is about r times staler) counts about r times more.
    With \bar\tau_j the mean staleness of all of client j's updates so far, this one
    included, and the K updates since the last step (update k from client j_k):

    .. math::
        a_k = 1 + \bar\tau_{j_k}, \qquad
        \bar\Delta = \frac{\sum_{k=1}^{K} a_k \Delta_k}{\sum_{k=1}^{K} a_k}, \qquad
        w \leftarrow \mathrm{opt}(w, \bar\Delta)

    With equal speeds every client has the same average staleness and this is FedBuff's
    step with s = 1. Where the paper leaves a choice: a_k uses 1 + tau-bar (staleness counts
    from 0 here, so a buffer of fresh updates still has weights), each a_k is fixed when its
    update arrives, and the weights are normalized over the buffer (so with K = 1 every
    update counts fully and this is FedBuff with s = 1: the reweighting needs K > 1).
    """

    update_kind = DELTA
    state_fields = ("buffer", "staleness_sum", "reports", "optimizer")

    def __init__(self, buffer_size: int = 10, optimizer: ServerOptimizer | None = None) -> None:
        self.buffer_size = checked_size(buffer_size)
        self.optimizer = optimizer if optimizer is not None else ServerOptimizer()
        self.buffer = DeltaBuffer()
        #: per client: the sum of its updates' staleness, and their number
        self.staleness_sum: dict[int, int] = {}
        self.reports: dict[int, int] = {}

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        self.staleness_sum[client] = self.staleness_sum.get(client, 0) + staleness
        self.reports[client] = self.reports.get(client, 0) + 1
        self.buffer.add(update, 1.0 + self.staleness_sum[client] / self.reports[client])
        if self.buffer.count < self.buffer_size:
            return None
        new = self.optimizer.step(global_arrays, self.buffer.divided(self.buffer.weight))
        self.buffer = DeltaBuffer()
        return new



class FedStaleWeight(BufferedStrategy):
    """FedStaleWeight: FedBuff's buffer of K client deltas averaged with weights that grow
    with each client's average staleness (`FedStaleWeightRule`), so slow clients are not
    drowned by fast ones.

    Args:
        buffer_size: K, the updates per server step. Default: 10.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        client_returns: "weights" (any ClientApp that follows Flower's FedAvg contract) or
            "delta", as in `FedBuff`. Default: "weights".
        server_lr: the server step's eta; None means min(1, K / M) for sgd (see `FedBuff`),
            the optimizer's own default otherwise. Default: None.
        server_momentum: sgd's server momentum (FedAvgM when > 0). Default: 0.0.
        work_window: T, seconds of local work a task should take (TimelyFL's adaptive
            local work): a client measured at t seconds a step gets min(K, max(1,
            floor(T / t))) of the run's K local steps; 0 means every task the K steps.
            Default: 0.0.
        server_optimizer: None (sgd), a name of `blocks.OPTIMIZERS` or a
            `ServerOptimizer`; each run starts from fresh moments. Default: None.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`) and
            `retry_backoff` (`AsyncStrategy`).

    Example:
        >>> FedStaleWeight(buffer_size=4, concurrency=8).rule.buffer_size
        4
    """

    def buffered_rule(self, optimizer: ServerOptimizer,
                      parts: RunParts | None) -> FedStaleWeightRule:
        return FedStaleWeightRule(self.buffer_size, optimizer)


@register("fedstaleweight", FedStaleWeight, server_optimizer=True)
def fedstaleweight_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedStaleWeight's constructor arguments from a validated run config."""
    return buffered_settings(config)
