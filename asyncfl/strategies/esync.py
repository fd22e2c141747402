"""ESync: a state server gives fast workers extra local steps so all arrive together
(Li et al., "ESync: Accelerating Intra-Domain Federated Learning in Heterogeneous Data
Centers")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from asyncfl.strategies.base import SyncStrategy
from asyncfl.strategies.utils import weighted_average
from asyncfl.timing import array_bytes

# relative slack when comparing sums of step times, so 1 + 1 + 1 + 1 <= 4 holds in floats
_TIE = 1e-9

#: model entries that are statistics, not parameters: averaged, never scaled by global_lr
STATISTIC_MARKERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class WorkerState:
    """One row of the state server's table for the current round."""

    step_time: float  # seconds the worker's next local step takes
    steps_done: int = 0
    elapsed: float = 0.0  # compute seconds spent this round
    ready: bool = False  # has reported its update


def round_target(table: Sequence[WorkerState]) -> float:
    """When the slowest worker's single step ends: the time the round aims for."""
    return max(w.step_time for w in table)


def step_allowed(worker: WorkerState, target: float, eps: float) -> bool:
    """Whether the worker runs one more step: every worker runs at least one, and another only
    while that step still ends within the target plus the tolerance eps."""
    if worker.ready:
        return False
    if worker.steps_done == 0:
        return True
    return worker.elapsed + worker.step_time <= (target + eps) * (1 + _TIE)


def allocate_steps(
    table: Sequence[WorkerState],
    eps: float,
    step_time: Callable[[int, int], float] | None = None,
) -> list[int]:
    """Local steps per worker for one round, applying `step_allowed` step by step.

    `step_time(i, k)` gives the duration of worker i's k-th step (0-based) where it varies
    (jitter in virtual time); by default every step takes the table's `step_time`. With
    constant step times c_i this gives k_i = max(1, floor((max_j c_j + eps) / c_i)).
    """
    duration = step_time or (lambda i, k: table[i].step_time)
    first = [replace(w, step_time=duration(i, 0)) for i, w in enumerate(table)]
    target = round_target(first)
    steps = []
    for i, worker in enumerate(first):
        while step_allowed(worker, target, eps):
            worker = replace(worker, steps_done=worker.steps_done + 1,
                             elapsed=worker.elapsed + worker.step_time,
                             step_time=duration(i, worker.steps_done + 1))
        steps.append(worker.steps_done)
    return steps


class ESync(SyncStrategy):
    r"""ESync: synchronous rounds with straggler-aware local step counts.

    Every round, all n workers start from w; the state server gives worker i k_i local steps
    (:func:`allocate_steps`) so that all arrive at about the slowest worker's time, and the
    parameter server averages their deltas, unweighted:

    .. math::
        w \leftarrow w + \gamma_g \frac{1}{n} \sum_i \Delta_i

    Statistics such as batch-norm running means are averaged (never scaled by gamma_g).
    In virtual time the rule runs step by step on the delay model's (jittered) step times.
    With a wall clock the first round probes with one step each; later rounds use the
    per-step times the workers measured in the previous round. The state table is kept
    per round in `run_log.tables["esync_state"]`.
    """

    reply_kind = "delta"
    checkpoint_fields = ("_measured", "_tasks_started")

    def __init__(self, *, global_lr: float = 1.0, eps: float = 0.0, **kwargs) -> None:
        super().__init__(1.0, **kwargs)
        if not global_lr > 0 or eps < 0:
            raise ValueError("global_lr must be > 0 and eps >= 0")
        self.global_lr = global_lr
        self.eps = eps
        self._measured: dict[int, float] = {}
        self._tasks_started: dict[int, int] = {}
        self._plan: dict[int, tuple[int, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every worker, each with the step count the state server allocates."""
        assert self.delays is not None
        settings = self.train_settings(config)
        size = array_bytes(arrays)
        clients = range(self.num_clients)
        if self.clock.kind == "virtual":
            times = {c: self._step_times(c) for c in clients}
            steps = allocate_steps([WorkerState(float(times[c](0))) for c in clients],
                                   self.eps, lambda i, k: float(times[i](k)))
            durations = [float(sum(times[c](k) for k in range(steps[c])))
                         + self.delays.comm_time(2 * size) for c in clients]
        else:
            if len(self._measured) < self.num_clients:  # probe round: one step each
                steps = [1] * self.num_clients
            else:
                steps = allocate_steps([WorkerState(self._measured[c]) for c in clients],
                                       self.eps)
            durations = [None] * self.num_clients
        self._plan = {c: (steps[c], durations[c]) for c in clients}
        self.run_log.tables.setdefault("esync_state", []).extend(
            {"round": server_round, "client": c, "steps": steps[c],
             "step_time": self._measured.get(c) if self.clock.kind == "wall"
             else float(self.delays.step_times[c])}
            for c in clients
        )
        return [self.instruction(arrays, {**settings, "local-steps": steps[c]},
                                 server_round - 1, c, size) for c in clients]

    def _step_times(self, client: int) -> Callable[[int], float]:
        """Durations of this client's steps in its next task (jittered, drawn on demand)."""
        assert self.delays is not None
        number = self._tasks_started.get(client, 0)
        self._tasks_started[client] = number + 1
        drawn: list[float] = []

        def step(k: int) -> float:
            if k >= len(drawn):
                more = max(2 * len(drawn), k + 1, 8)
                drawn[:] = self.delays.step_times_of_task(client, number, more).tolist()
            return drawn[k]

        return step

    def send_round(self, messages, settings: dict, server_round: int) -> None:
        """Push the round with each worker's own step count and (virtual) duration."""
        assert self.loop is not None
        for message in messages:
            client = self._client_of_node[message.metadata.dst_node_id]
            steps, duration = self._plan[client]
            self.loop.send([(message, client, steps, server_round - 1)], duration=duration)

    def record_update(self, completion, metrics, version_at_arrival: int,
                      version_after: int) -> None:
        """Also remember the worker's measured per-step time, for the next round's rule
        under a wall clock."""
        super().record_update(completion, metrics, version_at_arrival, version_after)
        steps = max(1, int(metrics.get("local-steps", 1)))
        self._measured[completion.client] = float(metrics.get("compute-time", 0.0)) / steps

    def combine(
        self,
        global_arrays: dict[str, np.ndarray],
        client_arrays: list[dict[str, np.ndarray]],
        weights: list[float],
    ) -> dict[str, np.ndarray]:
        mean_delta = weighted_average(
            [{k: v.astype(np.float64) for k, v in d.items()} for d in client_arrays],
            [1.0] * len(client_arrays),
        )
        out = {}
        for key, value in global_arrays.items():
            scale = 1.0 if any(m in key for m in STATISTIC_MARKERS) else self.global_lr
            new = value + scale * mean_delta[key]
            out[key] = (np.rint(new) if not np.issubdtype(value.dtype, np.floating)
                        else new).astype(value.dtype)
        return out

