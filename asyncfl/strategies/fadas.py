"""FADAS: federated adaptive asynchronous optimization (Wang et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine import arguments
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA
from asyncfl.strategies.blocks import (
    BufferedStrategy,
    DeltaBuffer,
    ServerOptimizer,
    checked_size,
)
from asyncfl.strategies.registry import buffered_settings, register


class FADASRule:
    r"""FedBuff's buffer (no staleness weight) with an adaptive server step whose learning
    rate shrinks when the buffer holds a very stale update. With tau_max the largest
    staleness of the K updates since the last step and tau_c the delay threshold:

    .. math::
        \Delta_t = \frac{1}{K} \sum_{k=1}^{K} \Delta_k, \qquad
        \eta_t = \begin{cases} \eta & \tau_{\max} \le \tau_c \\
                 \min(\eta, 1 / \tau_{\max}) & \tau_{\max} > \tau_c \end{cases}, \qquad
        w \leftarrow \mathrm{opt}(w, \Delta_t; \eta_t)

    `opt` is AMSGrad in the paper (m_t = beta1 m + (1 - beta1) Delta_t, v_t = beta2 v +
    (1 - beta2) Delta_t^2, v-hat_t = max(v-hat, v_t), w += eta_t m_t / (sqrt(v-hat_t) +
    epsilon)); any `ServerOptimizer` may take its place. Note that the adjustment changes
    nothing while eta <= 1 / tau_max (for eta = 0.01: until tau_max > 100).
    """

    update_kind = DELTA
    state_fields = ("buffer", "optimizer")

    def __init__(self, buffer_size: int = 10, optimizer: ServerOptimizer | None = None,
                 delay_threshold: int = 5) -> None:
        if delay_threshold < 0:
            raise ValueError(f"delay_threshold (tau_c) must be >= 0, got {delay_threshold}")
        self.buffer_size = checked_size(buffer_size)
        self.optimizer = optimizer if optimizer is not None else ServerOptimizer("amsgrad")
        self.delay_threshold = delay_threshold
        self.buffer = DeltaBuffer()

    def learning_rate(self, max_staleness: int) -> float:
        """eta_t for a buffer whose stalest update is `max_staleness` versions old."""
        eta = self.optimizer.lr
        if max_staleness <= self.delay_threshold:
            return eta
        return min(eta, 1.0 / max_staleness)

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        self.buffer.add(update, staleness=staleness)
        if self.buffer.count < self.buffer_size:
            return None
        new = self.optimizer.step(global_arrays, self.buffer.divided(self.buffer_size),
                                  self.learning_rate(self.buffer.max_staleness))
        self.buffer = DeltaBuffer()
        return new



class FADAS(BufferedStrategy):
    """FADAS: FedBuff's buffer of K client deltas, an AMSGrad server step and a
    delay-adaptive server learning rate (`FADASRule`).

    Args:
        buffer_size: K, the updates per server step. Default: 10.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        client_returns: "weights" (any ClientApp that follows Flower's FedAvg contract) or
            "delta", as in `FedBuff`. Default: "weights".
        server_lr: the server step's eta; None means the optimizer's default (amsgrad: 0.01;
            sgd: min(1, K / M)). Default: None.
        server_momentum: sgd's server momentum (FedAvgM when > 0). Default: 0.0.
        work_window: T, seconds of local work a task should take (TimelyFL's adaptive
            local work): a client measured at t seconds a step gets min(K, max(1,
            floor(T / t))) of the run's K local steps; 0 means every task the K steps.
            Default: 0.0.
        server_optimizer: None (AMSGrad, eta = 0.01), a name of `blocks.OPTIMIZERS` or a
            `ServerOptimizer`; each run starts from fresh moments. Default: None.
        delay_threshold: tau_c, the staleness above which the server step shrinks to
            min(eta, 1 / tau_max). Default: 5.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`) and
            `retry_backoff` (`AsyncStrategy`).

    Example:
        >>> FADAS(delay_threshold=2).rule.optimizer.name
        'amsgrad'
    """

    default_optimizer = "amsgrad"

    def __init__(self, buffer_size: int = 10, concurrency: int = 0, *,
                 client_returns: str = "weights", server_lr: float | None = None,
                 server_momentum: float = 0.0, work_window: float = 0.0,
                 server_optimizer: ServerOptimizer | str | None = None,
                 delay_threshold: int = 5, **options: Any) -> None:
        self.delay_threshold = arguments.integer("delay_threshold", delay_threshold)
        super().__init__(buffer_size, concurrency, client_returns=client_returns,
                         server_lr=server_lr, server_momentum=server_momentum,
                         work_window=work_window, server_optimizer=server_optimizer, **options)

    def buffered_rule(self, optimizer: ServerOptimizer, parts: RunParts | None) -> FADASRule:
        return FADASRule(self.buffer_size, optimizer, self.delay_threshold)


@register("fadas", FADAS, server_optimizer=True)
def fadas_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FADAS's constructor arguments from a validated run config."""
    return {**buffered_settings(config, FADAS.default_optimizer),
            "delay_threshold": config["fadas-threshold"]}
