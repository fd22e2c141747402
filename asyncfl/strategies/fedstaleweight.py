"""FedStaleWeight: buffered asynchronous FL with fair aggregation by staleness reweighting
(Ma et al., 2024)."""

from __future__ import annotations

from asyncfl.protocol import DELTA, WEIGHTS
from asyncfl.strategies.base import BufferedStrategy
from asyncfl.strategies.buffer import DeltaBuffer, checked_size
from asyncfl.strategies.runner import Arrays
from asyncfl.strategies.server_optimizer import ServerOptimizer


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
    drowned by fast ones. `server_optimizer` is the step (default: sgd, eta = 1);
    `client_returns` as in FedBuff."""

    def __init__(self, buffer_size: int = 10, concurrency: int = 0, *,
                 client_returns: str = WEIGHTS,
                 server_optimizer: ServerOptimizer | None = None, **options) -> None:
        super().__init__(concurrency, client_returns=client_returns, **options)
        self.default_step = server_optimizer is None
        self.rule = FedStaleWeightRule(buffer_size, server_optimizer)
