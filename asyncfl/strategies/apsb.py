"""APSB: asynchronous local SGD that broadcasts every new global model (Yang et al.)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from asyncfl.strategies.alsgd import ALSGD
from asyncfl.strategies.utils import task_seed
from asyncfl.timing import Completion, TrafficCounters, array_bytes

SEGMENT = "train.segment"
#: the record that carries a task's accumulated gradient between segments (with carry-state)
SEGMENT_GRADIENT = "segment.gradient"


@dataclass
class TaskPlan:
    """One worker's task of K iterations. Offsets are seconds from the task's start: offset
    k is when iteration k begins (offset K: compute done); the push lands at `duration`."""

    client: int
    start: float
    offsets: np.ndarray
    duration: float
    seed: int
    adopted: int  # version of the newest model the worker has taken
    done: int = 0  # iterations finished in earlier segments
    segment: int = 0  # iterations of the segment in flight
    # the worker's state between segments, when the server carries it (checkpointed runs)
    local: ArrayRecord | None = None
    gradient: ArrayRecord | None = None
    loss_sum: float = 0.0

    @property
    def end(self) -> float:
        return self.start + self.duration


class APSB(ALSGD):
    r"""Asynchronous parallel SGD with broadcast.

    As :class:`ALSGD`, every worker runs K local iterations and pushes its accumulated gradient
    G_i, and the server steps :math:`w \leftarrow w - \gamma G_i`. In addition every new w is
    broadcast to all workers; a worker that receives one adopts it at its next iteration
    boundary (its local model becomes w) while G_i keeps accumulating.

    In virtual time the durations of all steps are known in advance, so each task is sent as
    segments that end at the first iteration boundary where a broadcast can take effect (no
    update can land before the earliest end of another worker's task); at that boundary the
    worker continues, with the newest broadcast model if one has reached it by then
    (`broadcast_latency` after it was made). The worker keeps its local model and G in
    `context.state` between segments. With a wall clock, workers check in every `chunk`
    iterations and get the newest model if it changed. With K = 1 there are no boundaries
    inside a task, and APSB is A-LSGD exactly.

    A run that writes checkpoints cannot rely on `context.state` (a resumed run has fresh
    nodes), so there the server carries each worker's state between segments instead: the
    segment replies return it and the next segment brings it back. The algorithm and its
    results are the same either way (tested); only the simulation's messages grow.

    Communication counts the algorithm's transfers: each push, and per new model one transfer
    to every worker (the broadcast), not the continuation messages of the simulation.
    """

    checkpoint_fields = ("_plans", "_broadcasts", "_tasks_started", "_comm",
                         "_broadcast_version", "_config")

    def __init__(self, server_lr: float, concurrency: int = 0, *,
                 broadcast_latency: float = 0.0, chunk: int = 1, **kwargs) -> None:
        super().__init__(server_lr, concurrency, **kwargs)
        if broadcast_latency < 0 or chunk < 1:
            raise ValueError("broadcast_latency must be >= 0 and chunk >= 1")
        self.broadcast_latency = broadcast_latency
        self.chunk = chunk
        self._plans: dict[int, TaskPlan] = {}
        self._broadcasts: deque[tuple[float, int, ArrayRecord]] = deque()
        self._tasks_started: dict[int, int] = {}
        self._comm = TrafficCounters()
        self._broadcast_version = -1
        self._config: dict = {}

    def communication(self) -> TrafficCounters:
        return self._comm

    @property
    def carry_state(self) -> bool:
        """Whether the server carries the workers' state between segments (see above)."""
        return self.checkpoint_every > 0

    def _steps(self) -> int:
        steps = int(self._config.get("local-steps", 0))
        if steps < 1:
            raise ValueError("APSB needs local-steps >= 1 (K local iterations per push)")
        return steps

    def dispatch(self, arrays: ArrayRecord, config: dict, version: int, clients) -> int:
        """Start a task on each client from the newest model (every worker already has it
        from the broadcast, except the initial model and after a failed push)."""
        assert self.loop is not None and self.delays is not None
        self._config = config
        size = array_bytes(arrays)
        plans = []
        for client in clients:  # plan every new task first: each bounds the others' segments
            number = self._tasks_started.get(client, 0)
            self._tasks_started[client] = number + 1
            times = self.delays.step_times_of_task(client, number, self._steps())
            offsets = np.concatenate([[0.0], np.cumsum(times)])
            duration = float(times.sum()) + self.delays.comm_time(2 * size)
            plans.append(TaskPlan(client, self.loop.virtual_clock.now, offsets, duration,
                                  task_seed(self.seed, version, client), version))
            self._plans[client] = plans[-1]
        for plan in plans:
            self._send_segment(plan, arrays, size)
            if version != self._broadcast_version:
                self._comm.messages_sent += 1
                self._comm.bytes_down += size
        return len(plans)

    def on_new_version(self, version: int, arrays: ArrayRecord) -> None:
        """Broadcast: one model transfer to every worker."""
        assert self.loop is not None
        now = self.loop.virtual_clock.now
        self._broadcasts.append((now, version, arrays))
        while (len(self._broadcasts) > 1
               and self._broadcasts[1][0] + self.broadcast_latency <= now):
            self._broadcasts.popleft()
        size = array_bytes(arrays)
        self._comm.messages_sent += self.num_clients
        self._comm.bytes_down += self.num_clients * size
        self._broadcast_version = version

    def continue_task(self, completion: Completion, arrays: ArrayRecord, version: int) -> bool:
        plan = self._plans.get(completion.client)
        if plan is None:
            return False
        final = plan.done + plan.segment == len(plan.offsets) - 1
        if final or not completion.ok:
            del self._plans[completion.client]
            if final and completion.ok:
                self._comm.replies_received += 1
                self._comm.bytes_up += completion.bytes_up
            return False
        plan.done += plan.segment
        if self.carry_state:
            reply = completion.reply
            assert reply is not None
            plan.local, plan.gradient = reply.content["arrays"], reply.content[SEGMENT_GRADIENT]
            plan.loss_sum = float(reply.content["metrics"]["loss-sum"])
        newest = self._newest_arrived(version, arrays)
        adopt = newest is not None and newest[0] > plan.adopted
        if adopt:
            plan.adopted = newest[0]
        self._send_segment(plan, newest[1] if adopt else plan.local, array_bytes(arrays))
        return True

    def _newest_arrived(self, version: int, arrays: ArrayRecord) -> tuple[int, ArrayRecord] | None:
        """The newest model that has reached the workers by now."""
        if self.clock.kind == "wall":
            return version, arrays
        assert self.loop is not None
        now = self.loop.virtual_clock.now
        arrived = [(v, a) for t, v, a in self._broadcasts if t + self.broadcast_latency <= now]
        return arrived[-1] if arrived else None

    def _segment_end(self, plan: TaskPlan) -> int:
        """The iteration at which the next segment stops: the first boundary where a
        broadcast can take effect, or the end of the task."""
        steps = len(plan.offsets) - 1
        if self.clock.kind == "wall":
            return min(steps, plan.done + self.chunk)
        soonest = min(
            [p.end for c, p in self._plans.items() if c != plan.client]
            + [t for t, v, _ in self._broadcasts if v > plan.adopted],
            default=math.inf,
        ) + self.broadcast_latency
        k = int(np.searchsorted(plan.start + plan.offsets, soonest, side="left"))
        return steps if k >= steps else max(k, plan.done + 1)

    def _send_segment(self, plan: TaskPlan, arrays: ArrayRecord | None, model_bytes: int) -> None:
        assert self.loop is not None
        stop = self._segment_end(plan)
        steps = len(plan.offsets) - 1
        plan.segment = stop - plan.done
        final = stop == steps
        if final:
            duration = plan.duration - plan.offsets[plan.done]
        else:
            duration = plan.offsets[stop] - plan.offsets[plan.done]
        extra = {"segment-start": plan.done, "segment-steps": plan.segment,
                 "final": final, "task-seed": plan.seed}
        if self.carry_state:
            extra.update({"carry-state": True, "loss-sum": plan.loss_sum})
        message = self.instruction(arrays, self._config, plan.adopted, plan.client,
                                   model_bytes, SEGMENT, extra)
        if plan.gradient is not None:
            message.content[SEGMENT_GRADIENT] = plan.gradient
        self.loop.send([(message, plan.client, plan.segment, plan.adopted)],
                       model_bytes=array_bytes(arrays), duration=float(duration),
                       priority=0 if final else 1)
