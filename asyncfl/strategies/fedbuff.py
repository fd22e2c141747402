"""FedBuff: buffered asynchronous aggregation (Nguyen et al., 2022)."""

from __future__ import annotations

from asyncfl.protocol import DELTA, WEIGHTS
from asyncfl.strategies.base import BufferedStrategy
from asyncfl.strategies.buffer import DeltaBuffer, checked_size
from asyncfl.strategies.runner import Arrays
from asyncfl.strategies.server_optimizer import ServerOptimizer
from asyncfl.strategies.staleness import StalenessFn, polynomial_default


class FedBuffRule:
    r"""Buffer staleness-weighted deltas; every K arrivals, step the server optimizer on
    their mean. A client that started from version tau_i returns Delta_i = w_i - w_{tau_i};
    at server version t:

    .. math::
        \bar\Delta = \frac{1}{K} \sum_{i=1}^{K} s(t - \tau_i) \Delta_i, \qquad
        w \leftarrow \mathrm{opt}(w, \bar\Delta)

    With the default optimizer (sgd, server learning rate gamma, momentum beta) that is
    m <- beta m + Delta-bar, w <- w + gamma m (see `server_optimizer`).
    """

    update_kind = DELTA
    state_fields = ("buffer", "optimizer")

    def __init__(self, buffer_size: int = 10, optimizer: ServerOptimizer | None = None,
                 staleness: StalenessFn = polynomial_default) -> None:
        self.buffer_size = checked_size(buffer_size)
        self.optimizer = optimizer if optimizer is not None else ServerOptimizer()
        self.staleness = staleness
        self.buffer = DeltaBuffer()

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        self.buffer.add(update, self.staleness(staleness))
        if self.buffer.count < self.buffer_size:
            return None
        new = self.optimizer.step(global_arrays, self.buffer.divided(self.buffer_size))
        self.buffer = DeltaBuffer()
        return new


class FedBuff(BufferedStrategy):
    """FedBuff: M clients train at once, each Q local steps from the version it received;
    the server folds their deltas in with `FedBuffRule`. With `client_returns="weights"`
    (any ClientApp that follows Flower's FedAvg contract) the server computes each delta from
    the version the client started from, kept while that client is in flight.

    The server step is `server_optimizer` (default: sgd with `server_lr` gamma, by default
    min(1, K / M), and `server_momentum` beta, FedAvgM when beta > 0); pass e.g.
    `ServerOptimizer("adam", lr=0.01)` for FedAdam's step, and leave `server_lr` and
    `server_momentum` at their defaults then.
    """

    def __init__(
        self,
        buffer_size: int = 10,
        concurrency: int = 0,
        *,
        client_returns: str = WEIGHTS,
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_optimizer: ServerOptimizer | None = None,
        staleness: StalenessFn | None = None,
        **options,
    ) -> None:
        super().__init__(concurrency, client_returns=client_returns, **options)
        if server_optimizer is None:
            self.default_step = server_lr is None
            server_optimizer = ServerOptimizer("sgd", server_lr or 1.0, server_momentum)
        elif server_lr is not None or server_momentum != 0.0:
            raise ValueError("give server_lr and server_momentum to the ServerOptimizer "
                             "passed as server_optimizer, not to FedBuff")
        self.rule = FedBuffRule(buffer_size, server_optimizer,
                                staleness if staleness is not None else polynomial_default)
