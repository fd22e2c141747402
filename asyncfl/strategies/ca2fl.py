"""CA2FL: asynchronous FL with cached update calibration (Wang et al., ICLR 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA
from asyncfl.strategies.blocks import (
    BufferedStrategy,
    DeltaBuffer,
    ServerOptimizer,
    checked_size,
)
from asyncfl.strategies.registry import buffered_settings, register


class CA2FLRule:
    r"""Cache every client's latest delta h^i; every K arrivals step on the mean of all N
    caches, calibrated by the buffer's new deltas. At version t, with S_t the K updates that
    arrived since the last step (client j_k returned Delta_k) and h^i_t the caches as they
    were when version t was made (zero for a client not heard from yet):

    .. math::
        h_t = \frac{1}{N} \sum_{i=1}^{N} h^i_t, \qquad
        v_t = h_t + \frac{1}{K} \sum_{k \in S_t} (\Delta_k - h^{j_k}_t), \qquad
        w \leftarrow \mathrm{opt}(w, v_t)

    and each arrival replaces its client's cache, h^{j_k} <- Delta_k. So every client's
    latest direction counts in every step, however rarely it reports. No staleness weight
    (the paper has none); `opt` is the server optimizer (default: w <- w + eta v_t).

    Where the paper is silent: a client that reports twice before a step is calibrated both
    times against h^j_t, its cache as the step began (the paper's h_t^j), and its cache
    ends as its newer delta. The cache costs N model-sized arrays of float64.
    """

    update_kind = DELTA
    state_fields = ("buffer", "cache", "step_start", "cache_sum", "optimizer")

    def __init__(self, buffer_size: int = 10, optimizer: ServerOptimizer | None = None,
                 num_clients: int | None = None) -> None:
        self.buffer_size = checked_size(buffer_size)
        self.optimizer = optimizer if optimizer is not None else ServerOptimizer()
        #: N; the Flower face sets it when the run's clients are known
        self.num_clients = num_clients
        self.buffer = DeltaBuffer()
        #: h^i: client -> its latest delta
        self.cache: dict[int, Arrays] = {}
        #: h^j_t of the clients heard from since the last step (None: no cache then)
        self.step_start: dict[int, Arrays | None] = {}
        #: sum_i h^i_t over the caches as the last step left them
        self.cache_sum: Arrays = {}

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        if self.num_clients is None or not 0 <= client < self.num_clients:
            raise ValueError(f"CA2FLRule needs num_clients (N) above every client index; "
                             f"got N = {self.num_clients}, client {client}")
        if client not in self.step_start:
            self.step_start[client] = self.cache.get(client)
        start = self.step_start[client]
        delta = {k: v.astype(np.float64) for k, v in update.items()}
        self.buffer.add(delta if start is None else {k: v - start[k] for k, v in delta.items()})
        self.cache[client] = delta
        if self.buffer.count < self.buffer_size:
            return None
        calibration = self.buffer.divided(self.buffer_size)
        direction = {k: self.cache_sum[k] / self.num_clients + v if self.cache_sum else v
                     for k, v in calibration.items()}
        new = self.optimizer.step(global_arrays, direction)
        for j, old in self.step_start.items():  # sum_i h^i moves by h^j_new - h^j_t
            for key, value in self.cache[j].items():
                moved = self.cache_sum.get(key, 0.0) + value
                self.cache_sum[key] = moved if old is None else moved - old[key]
        self.buffer, self.step_start = DeltaBuffer(), {}
        return new



class CA2FL(BufferedStrategy):
    """CA2FL: FedBuff's buffer of K client deltas, calibrated by a server cache of every
    client's latest delta (`CA2FLRule`), so that slow clients' directions are in every
    step.

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
        >>> CA2FL(buffer_size=5).rule.buffer_size
        5
    """

    def buffered_rule(self, optimizer: ServerOptimizer, parts: RunParts | None) -> CA2FLRule:
        return CA2FLRule(self.buffer_size, optimizer,
                         parts.num_clients if parts is not None else None)


@register("ca2fl", CA2FL, server_optimizer=True)
def ca2fl_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """CA2FL's constructor arguments from a validated run config."""
    return buffered_settings(config)
