"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA
from asyncfl.strategies.blocks import (
    BufferedStrategy,
    DeltaBuffer,
    ServerOptimizer,
    StalenessFn,
    checked_size,
    constant,
    staleness_arg,
    staleness_setting,
)
from asyncfl.strategies.registry import buffered_settings, register


class FedBuffRule:
    r"""Buffer staleness-weighted deltas; every K arrivals, step the server optimizer on
    their mean. A client that started from version tau_i returns Delta_i = w_i - w_{tau_i};
    at server version t:

    .. math::
        \bar\Delta = \frac{1}{K} \sum_{i=1}^{K} s(t - \tau_i) \Delta_i, \qquad
        w \leftarrow \mathrm{opt}(w, \bar\Delta)

    With the default optimizer (sgd, server learning rate gamma, momentum beta) that is
    m <- beta m + Delta-bar, w <- w + gamma m (see `blocks.ServerOptimizer`).

    `measured_staleness` (FedBuff's default server step): Delta-bar is divided by
    max(s-bar, gamma), s-bar the mean staleness weight of every update folded in so far, so
    the step is min(1, gamma / s-bar) times the buffer's mean. With gamma = K / M a turn of
    the M clients in flight (M / K steps) then moves the model as far as one synchronous
    average of their updates would, the staleness weights counted; without it, a turn moved
    the model s-bar of that (a tenth at M / K = 100, where s-bar is about (1 + M / K)^-1/2).

    Example:
        >>> import numpy as np
        >>> rule = FedBuffRule(2, ServerOptimizer("sgd", lr=0.5), staleness=lambda tau: 1.0)
        >>> w = {"x": np.array([1.0])}
        >>> rule.fold(w, {"x": np.array([2.0])}, 10, 0, client=0) is None  # buffer 1 of 2
        True
        >>> rule.fold(w, {"x": np.array([4.0])}, 10, 3, client=1)  # 1 + 0.5 * (2 + 4) / 2
        {'x': array([2.5])}
    """

    update_kind = DELTA
    state_fields = ("buffer", "optimizer", "weight_sum", "folded")

    def __init__(self, buffer_size: int = 10, optimizer: ServerOptimizer | None = None,
                 staleness: StalenessFn = constant,
                 measured_staleness: bool = False) -> None:
        self.buffer_size = checked_size(buffer_size)
        self.optimizer = optimizer if optimizer is not None else ServerOptimizer()
        self.staleness = staleness
        self.measured_staleness = measured_staleness
        self.buffer = DeltaBuffer()
        self.weight_sum, self.folded = 0.0, 0  # s-bar = weight_sum / folded

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        weight = self.staleness(staleness)
        self.buffer.add(update, weight)
        self.weight_sum, self.folded = self.weight_sum + weight, self.folded + 1
        if self.buffer.count < self.buffer_size:
            return None
        divisor = self.buffer_size
        if self.measured_staleness:
            divisor *= max(self.weight_sum / self.folded, self.optimizer.lr)
        new = self.optimizer.step(global_arrays, self.buffer.divided(divisor))
        self.buffer = DeltaBuffer()
        return new


class FedBuff(BufferedStrategy):
    """FedBuff: M clients train at once, each Q local steps from the version it received;
    the server folds their deltas in with `FedBuffRule`.

    Args:
        buffer_size: K, the updates per server step. Default: 10.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        client_returns: what the ClientApp is asked for, "weights" (any ClientApp that
            follows Flower's FedAvg contract: the server computes each delta from the
            version the client started from) or "delta". Default: "weights".
        server_lr: the sgd server step gamma; None means min(1, K / M)
            (`blocks.default_server_lr`) with the buffer's mean divided by the measured mean
            staleness weight (`FedBuffRule`'s `measured_staleness`): staleness is about
            M / K, and M / K such steps move the model as one synchronous average of the
            same updates would; a number is the paper's plain step; for a named adaptive
            `server_optimizer`, None means its own default eta. Default: None.
        server_momentum: sgd's server momentum beta (FedAvgM when > 0). Default: 0.0.
        work_window: T, seconds of local work a task should take (TimelyFL's adaptive
            local work): a client measured at t seconds a step gets min(K, max(1,
            floor(T / t))) of the run's K local steps; 0 means every task the K steps.
            Default: 0.0.
        server_optimizer: None (sgd with `server_lr` and `server_momentum`), a name of
            `blocks.OPTIMIZERS` ("adam" for FedAdam's step, ...) or a `ServerOptimizer`
            (then leave `server_lr` and `server_momentum` at their defaults). Each run
            starts from fresh moments. Default: None.
        staleness: s(tau), a name ("constant", "polynomial", "hinge", with a = 0.5, b = 4)
            or a function of the staleness; None means constant (the paper weighs by
            polynomial, a = 0.5: with clients whose data differ, weighing stale updates down
            weighs the slow clients' data down, and the server step `server_lr` already
            bounds what stale updates move). Default: None.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `retry_backoff` (`AsyncStrategy`).

    Example:
        >>> strategy = FedBuff(buffer_size=3, concurrency=6, staleness="hinge")
        >>> strategy.rule.buffer_size, strategy.concurrency
        (3, 6)
    """

    def __init__(self, buffer_size: int = 10, concurrency: int = 0, *,
                 client_returns: str = "weights", server_lr: float | None = None,
                 server_momentum: float = 0.0, work_window: float = 0.0,
                 server_optimizer: ServerOptimizer | str | None = None,
                 staleness: str | StalenessFn | None = None, **options: Any) -> None:
        self.staleness = staleness_arg(staleness, default=constant)
        super().__init__(buffer_size, concurrency, client_returns=client_returns,
                         server_lr=server_lr, server_momentum=server_momentum,
                         work_window=work_window, server_optimizer=server_optimizer, **options)

    def buffered_rule(self, optimizer: ServerOptimizer, parts: RunParts | None) -> FedBuffRule:
        return FedBuffRule(self.buffer_size, optimizer, self.staleness,
                           measured_staleness=self.server_step.is_default_sgd)


@register("fedbuff", FedBuff, server_optimizer=True)
def fedbuff_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedBuff's constructor arguments from a validated run config."""
    return {**buffered_settings(config),
            "staleness": staleness_setting(config)}
