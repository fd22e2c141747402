"""ESync: a state server gives fast workers extra local steps so all arrive together
(Li et al., "ESync: Accelerating Intra-Domain Federated Learning in Heterogeneous Data
Centers")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flwr.app import MetricRecord

from asyncfl.engine import EventLoop, arguments
from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.guard import CapabilityError
from asyncfl.engine.recorder import RunRecorder
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.engine.sync_runner import StepPlan
from asyncfl.protocol import COMPUTE_TIME, DELTA, LOCAL_STEPS, STEPS
from asyncfl.strategies.blocks import weighted_average
from asyncfl.strategies.registry import register, server_lr, sync_settings

# relative slack when comparing sums of step times, so 1 + 1 + 1 + 1 <= 4 holds in floats
_TIE = 1e-9


@dataclass(frozen=True)
class WorkerState:
    """One row of the state server's table for the current round."""

    step_time: float  # seconds the worker's next local step takes
    steps_done: int = 0
    elapsed: float = 0.0  # compute seconds spent this round
    ready: bool = False  # has reported its update


def step_allowed(worker: WorkerState, target: float, eps: float) -> bool:
    """Whether the worker runs one more step: every worker runs at least one, and another only
    while that step still ends within the target plus the tolerance eps."""
    if worker.ready:
        return False
    if worker.steps_done == 0:
        return True
    return worker.elapsed + worker.step_time <= (target + eps) * (1 + _TIE)


def round_target(step_time: Callable[[int, int], float], workers: int,
                 base_steps: int = 1) -> float:
    """When the slowest worker's `base_steps`-th step ends: the time the round aims for."""
    return max(sum(step_time(i, k) for k in range(base_steps)) for i in range(workers))


def allocate_steps(
    table: Sequence[WorkerState],
    eps: float,
    step_time: Callable[[int, int], float] | None = None,
    base_steps: int = 1,
) -> list[int]:
    """Local steps per worker for one round, applying `step_allowed` step by step.

    `step_time(i, k)` gives the duration of worker i's k-th step (0-based) where it varies
    (jitter in virtual time); by default every step takes the table's `step_time`. The round
    aims at the end of the slowest worker's `base_steps` steps (the paper: one), so every
    worker runs at least `base_steps`. With constant step times c_i this gives
    k_i = max(1, floor((K max_j c_j + eps) / c_i)), K = `base_steps`.
    """
    duration = step_time or (lambda i, k: table[i].step_time)
    first = [replace(w, step_time=duration(i, 0)) for i, w in enumerate(table)]
    target = round_target(duration, len(table), base_steps)
    steps = []
    for i, worker in enumerate(first):
        while step_allowed(worker, target, eps):
            worker = replace(worker, steps_done=worker.steps_done + 1,
                             elapsed=worker.elapsed + worker.step_time,
                             step_time=duration(i, worker.steps_done + 1))
        steps.append(worker.steps_done)
    return steps


class ESyncRule:
    r"""The parameter server's step: the workers' deltas averaged, unweighted, and scaled by
    the global learning rate gamma_g (`server_lr`),

    .. math::
        w \leftarrow w + \gamma_g \frac{1}{n} \sum_i \Delta_i

    Example:
        >>> import numpy as np
        >>> ESyncRule(0.5).combine({"x": np.array([1.0])},
        ...                        [{"x": np.array([2.0])}, {"x": np.array([4.0])}], [1, 9])
        {'x': array([2.5])}
    """

    update_kind = DELTA
    state_fields = ()

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = arguments.positive("server_lr", server_lr)

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        mean_delta = weighted_average(
            [{k: v.astype(np.float64) for k, v in d.items()} for d in updates],
            [1.0] * len(updates),
        )
        return {key: (value + self.server_lr * mean_delta[key]).astype(value.dtype)
                for key, value in global_arrays.items()}


class StateServer:
    """ESync's state server: each round, the local steps of every worker taking part.

    The slowest worker runs `base_steps` (the run's `local-steps`; the paper's one when the
    run sets none), the others as many as fit in that time. In virtual time `allocate_steps`
    runs step by step on the delay model's (jittered) step times of each worker's next task.
    With a wall clock the first round probes with `base_steps` each; later rounds use the
    per-step times the workers measured in their last task (compute time / steps of each
    applied reply). Each round's table is kept in the recorder as `esync_state`.
    """

    def __init__(self, eps: float, recorder: RunRecorder, base_steps: int = 1) -> None:
        self.eps = arguments.non_negative("eps", eps)
        self.base_steps = arguments.integer("base_steps", base_steps, minimum=1)
        self.recorder = recorder
        self.measured: dict[int, float] = {}
        self.assigned: dict[int, int] = {}
        self.wall = False

    def steps(self, server_round: int, clients: list[int], loop: EventLoop) -> dict[int, int]:
        if loop.virtual:
            times = [_lazy_step_times(loop, c) for c in clients]
            steps = allocate_steps([WorkerState(t(0)) for t in times], self.eps,
                                   lambda i, k: times[i](k), self.base_steps)
        elif all(c in self.measured for c in clients):
            steps = allocate_steps([WorkerState(self.measured[c]) for c in clients], self.eps,
                                   base_steps=self.base_steps)
        else:  # probe round: the slowest worker's count each
            steps = [self.base_steps] * len(clients)
        self.assigned, self.wall = dict(zip(clients, steps, strict=True)), not loop.virtual
        self.recorder.tables.setdefault("esync_state", []).extend(
            {"round": server_round, "client": c, "steps": k,
             "step_time": float(loop.delays.step_times[c]) if loop.virtual
             else self.measured.get(c)}
            for c, k in zip(clients, steps, strict=True))
        return dict(zip(clients, steps, strict=True))

    def observe(self, client: int, metrics: MetricRecord) -> None:
        """Check that the worker ran the steps it was given (and, with a wall clock, said how
        long they took), then remember its measured per-step time (for the wall-clock
        rule). A ClientApp that cannot is stopped at its first reply: ESync without step
        counts is a plain average that waits for the slowest worker, not ESync."""
        ran, seconds = metrics.get(STEPS), metrics.get(COMPUTE_TIME)
        missing = []
        if ran is None or int(ran) != self.assigned.get(client, ran):
            missing.append(f"run the {STEPS} it is sent ({self.assigned.get(client)}) and "
                           f"report them as metric {STEPS!r} (got {ran!r})")
        if self.wall and not (isinstance(seconds, (int, float)) and seconds > 0):
            missing.append(f"report the seconds its steps took as metric {COMPUTE_TIME!r} "
                           f"(got {seconds!r})")
        if missing:
            raise CapabilityError(
                "ESync needs the ClientApp to " + " and ".join(missing) + "; wrap its per-step "
                "train function with asyncfl.client.register (docs/client-app.md: your own "
                "ClientApp)")
        self.measured[client] = float(seconds or 0.0) / max(1, int(ran))

    def snapshot(self) -> dict:
        return {"measured": dict(self.measured)}

    def restore(self, state: dict) -> None:
        self.measured = dict(state["measured"])


def _lazy_step_times(loop: EventLoop, client: int) -> Callable[[int], float]:
    """Durations of the client's next task's steps, drawn as far as they are asked for."""
    drawn: list[float] = []

    def step(k: int) -> float:
        if k >= len(drawn):
            drawn[:] = loop.step_times(client, max(2 * len(drawn), k + 1, 8)).tolist()
        return drawn[k]

    return step


class ESync(SyncStrategy):
    """ESync: synchronous rounds with straggler-aware local step counts. Every round all
    workers start from w; the state server (`StateServer`, `allocate_steps`) gives worker i
    k_i local steps so that all arrive at about the time the slowest worker ends its K steps
    (K: train_config's `local-steps`, else 1 as in the paper), and the parameter server
    applies `ESyncRule`. The worker half (run the assigned steps, report them and
    their seconds) is `asyncfl.client`'s train handler (`asyncfl.client.register`).

    Args:
        fraction_train: C, the fraction of the clients sampled per round. Default: 1.0.
        server_lr: gamma_g, the scale of the mean delta; None means 1 (a plain average).
            Default: None.
        eps: the state server's tolerance: a worker may end up to eps seconds after the
            slowest worker's single step. Default: 0.0.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, guard, ...) and `round_timeout`, `min_train_nodes`
            (`SyncStrategy`).

    Example:
        >>> ESync(server_lr=0.8, eps=0.1).rule.server_lr
        0.8
    """

    reply_kind = DELTA
    step_setting = "server_lr (run config: server-lr)"

    def __init__(self, fraction_train: float = 1.0, *, server_lr: float | None = None,
                 eps: float = 0.0, **options: Any) -> None:
        super().__init__(fraction_train, **options)
        self.server_lr = arguments.optional_positive("server_lr", server_lr)
        self.eps = arguments.non_negative("eps", eps)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> ESyncRule:
        return ESyncRule(self.server_lr if self.server_lr is not None else 1.0)

    def step_plan(self, parts: RunParts) -> StepPlan:
        base = int(parts.dispatcher.settings.get(LOCAL_STEPS, 0)) or 1
        return StateServer(self.eps, parts.recorder, base)


@register("esync", ESync)
def esync_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """ESync's constructor arguments from a validated run config."""
    return {**sync_settings(config), "server_lr": server_lr(config), "eps": config["esync-eps"]}
