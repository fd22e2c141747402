"""APSB: asynchronous local SGD that broadcasts every new global model (Yang et al.)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from asyncfl.engine import Completion, TaskTiming, TrafficCounters, arguments
from asyncfl.engine.checkpoint import state_class
from asyncfl.engine.dispatch import Dispatcher, WholeTasks
from asyncfl.engine.evaluation import NO_HANDLER
from asyncfl.engine.guard import CapabilityError
from asyncfl.engine.runner import RunParts
from asyncfl.engine.utils import task_seed
from asyncfl.protocol import (
    ARRAYS,
    CARRY_STATE,
    FINAL,
    LOCAL_STEPS,
    LOSS_SUM,
    METRICS,
    SEGMENT,
    SEGMENT_GRADIENT,
    SEGMENT_START,
    SEGMENT_STEPS,
    TASK_SEED,
    array_bytes,
)
from asyncfl.strategies.alsgd import ALSGD, alsgd_settings
from asyncfl.strategies.registry import register


@state_class
@dataclass
class WorkerTask:
    """A worker's task of K iterations in progress: its timing, the newest model it has
    adopted, the iterations done in earlier segments and those of the segment in flight."""

    timing: TaskTiming
    seed: int
    adopted: int  # version of the newest model the worker has taken
    done: int = 0
    segment: int = 0
    # the worker's state between segments, when the server carries it (checkpointed runs)
    local: ArrayRecord | None = None
    gradient: ArrayRecord | None = None
    loss_sum: float = 0.0


class SegmentedTasks(WholeTasks):
    """How APSB sends work: each task in segments that end at the iteration boundaries where a
    broadcast can take effect, and every new model broadcast to all workers.

    In virtual time the durations of all steps are known at dispatch, so a segment ends at the
    first boundary at which another worker's push (the earliest end of another task) plus the
    `broadcast_latency` can have produced a model; at that boundary the worker continues, with
    the newest broadcast model that has reached it by then. With a wall clock, workers check
    in every `chunk` iterations and get the newest model if it changed. With `carry_state`
    (runs that write checkpoints, whose resumed nodes are fresh) the server carries each
    worker's local model, gradient and loss between segments instead of `context.state`.

    Communication counts the algorithm's transfers: each push, and per new model one
    broadcast, a single send that every worker receives, at the cost of one point-to-point
    transfer (the poster's premise: "all devices can receive [a] broadcast ... with the same
    cost of p2p transfer"); not the continuation messages of the simulation.
    """

    def __init__(self, dispatcher: Dispatcher, seed: int, broadcast_latency: float,
                 chunk: int, carry_state: bool) -> None:
        super().__init__(dispatcher)
        self.loop = dispatcher.loop
        self.seed = seed
        self.broadcast_latency = broadcast_latency
        self.chunk = chunk
        self.carry_state = carry_state
        self.tasks: dict[int, WorkerTask] = {}
        self.broadcasts: deque[tuple[float, int, ArrayRecord]] = deque()
        self.comm = TrafficCounters()
        self.broadcast_version = -1

    def traffic(self) -> TrafficCounters:
        return self.comm

    def snapshot(self) -> dict:
        return {"tasks": self.tasks, "broadcasts": self.broadcasts, "comm": self.comm,
                "broadcast_version": self.broadcast_version}

    def restore(self, state: dict) -> None:
        self.tasks, self.broadcasts = state["tasks"], state["broadcasts"]
        self.comm, self.broadcast_version = state["comm"], state["broadcast_version"]

    def _steps(self) -> int:
        steps = int(self.dispatcher.settings.get(LOCAL_STEPS, 0))
        if steps < 1:
            raise CapabilityError(
                f"APSB needs train_config 'local-steps' >= 1 (K local iterations per push, got "
                f"{self.dispatcher.settings.get(LOCAL_STEPS)!r}), which it sends in segments: "
                "put it in train_config, and give the ClientApp the segment handler with "
                "asyncfl.client.register (docs/client-app.md: your own ClientApp)")
        return steps

    def start(self, arrays: ArrayRecord, version: int, clients: Iterable[int]) -> int:
        """Start a task on each client from the newest model (every worker already has it
        from the broadcast, except the initial model and after a failed push)."""
        size = array_bytes(arrays)
        started = []
        for client in clients:  # plan every new task first: each bounds the others' segments
            timing = self.loop.plan_task(client, self._steps(), size)
            self.tasks[client] = WorkerTask(timing, task_seed(self.seed, version, client),
                                            version)
            started.append(self.tasks[client])
        for task in started:
            self._send_segment(task, arrays, size)
            if version != self.broadcast_version:
                self.comm.messages_sent += 1
                self.comm.bytes_down += size
        return len(started)

    def new_version(self, version: int, arrays: ArrayRecord) -> None:
        """Broadcast: one send of the model, received by every worker."""
        now = self.loop.virtual_clock.now
        self.broadcasts.append((now, version, arrays))
        while (len(self.broadcasts) > 1
               and self.broadcasts[1][0] + self.broadcast_latency <= now):
            self.broadcasts.popleft()
        self.comm.messages_sent += 1
        self.comm.bytes_down += array_bytes(arrays)
        self.broadcast_version = version

    def continued(self, completion: Completion, arrays: ArrayRecord, version: int) -> bool:
        task = self.tasks.get(completion.client)
        if task is None:
            return False
        if NO_HANDLER in completion.failure_reason:
            raise CapabilityError(
                f"APSB sends its tasks in segments (message type {SEGMENT!r}) so that a worker "
                "adopts every broadcast model mid-task, and the ClientApp has no handler for "
                f"them ({completion.failure_reason}). Register one with asyncfl.client.register "
                "(docs/client-app.md: your own ClientApp), or use ALSGD, which is APSB without "
                "broadcasts")
        final = task.done + task.segment == task.timing.steps
        if final or not completion.ok:
            del self.tasks[completion.client]
            if final and completion.ok:
                self.comm.replies_received += 1
                self.comm.bytes_up += completion.bytes_up
            return False
        task.done += task.segment
        if self.carry_state:
            reply = completion.reply
            assert reply is not None
            task.local, task.gradient = reply.content[ARRAYS], reply.content[SEGMENT_GRADIENT]
            task.loss_sum = float(reply.content[METRICS][LOSS_SUM])
        newest = self._newest_arrived(version, arrays)
        adopt = newest is not None and newest[0] > task.adopted
        if adopt:
            task.adopted = newest[0]
        self._send_segment(task, newest[1] if adopt else task.local, array_bytes(arrays))
        return True

    def _newest_arrived(self, version: int, arrays: ArrayRecord
                        ) -> tuple[int, ArrayRecord] | None:
        """The newest model that has reached the workers by now."""
        if not self.loop.virtual:
            return version, arrays
        now = self.loop.virtual_clock.now
        arrived = [(v, a) for t, v, a in self.broadcasts if t + self.broadcast_latency <= now]
        return arrived[-1] if arrived else None

    def _segment_end(self, task: WorkerTask) -> int:
        """The iteration at which the next segment stops: the first boundary where a
        broadcast can take effect, or the end of the task."""
        steps = task.timing.steps
        if not self.loop.virtual:
            return min(steps, task.done + self.chunk)
        soonest = min(
            [t.timing.end for c, t in self.tasks.items() if c != task.timing.client]
            + [t for t, v, _ in self.broadcasts if v > task.adopted],
            default=math.inf,
        ) + self.broadcast_latency
        k = int(np.searchsorted(task.timing.start + task.timing.offsets, soonest,
                                side="left"))
        return steps if k >= steps else max(k, task.done + 1)

    def _send_segment(self, task: WorkerTask, arrays: ArrayRecord | None,
                      model_bytes: int) -> None:
        stop = self._segment_end(task)
        task.segment = stop - task.done
        extra = {SEGMENT_START: task.done, SEGMENT_STEPS: task.segment,
                 FINAL: stop == task.timing.steps, TASK_SEED: task.seed}
        if self.carry_state:
            extra.update({CARRY_STATE: True, LOSS_SUM: task.loss_sum})
        message = self.dispatcher.instruction(arrays, task.adopted, task.timing.client,
                                              model_bytes, message_type=SEGMENT, extra=extra)
        if task.gradient is not None:
            message.content[SEGMENT_GRADIENT] = task.gradient
        self.loop.send_segment(message, task.timing, task.done, stop, task.adopted,
                               array_bytes(arrays))


class APSB(ALSGD):
    r"""Asynchronous parallel SGD with broadcast.

    As :class:`ALSGD`, every worker runs K local iterations and pushes its accumulated gradient
    G_i, and the server steps :math:`w \leftarrow w - \gamma G_i` (`GradientStepRule`,
    gamma = `server_lr` x lr). In addition every new w is broadcast to all workers; a worker
    that receives one adopts it at its next iteration boundary (its local model becomes w)
    while G_i keeps accumulating. `SegmentedTasks` (above) is the server half that sends the
    work so; the worker half, which keeps the local model and G between segments in
    `context.state` (or, in runs that write checkpoints, takes them from the server), is
    `asyncfl.client._segment` (`asyncfl.client.register` adds it to any ClientApp). With K = 1
    there are no boundaries inside a task, and APSB is A-LSGD exactly.

    Args:
        server_lr: gamma / lr; None means min(1, 1 / M) (see `ALSGD`). Default: None.
        concurrency: M, the clients in flight at once; 0 means every client. Default: 0.
        broadcast_latency: virtual seconds until a broadcast model reaches the workers
            (virtual clock). Default: 0.0.
        chunk: with a wall clock, the iterations between a worker's check-ins for a newer
            model. Default: 1.
        **options: as for `ALSGD`.

    Example:
        >>> APSB(broadcast_latency=0.5, chunk=2).broadcast_latency
        0.5
    """

    def __init__(self, server_lr: float | None = None, concurrency: int = 0, *,
                 broadcast_latency: float = 0.0, chunk: int = 1, **options: Any) -> None:
        super().__init__(server_lr, concurrency, **options)
        self.broadcast_latency = arguments.non_negative("broadcast_latency", broadcast_latency)
        self.chunk = arguments.integer("chunk", chunk, 1)

    def tasks(self, parts: RunParts) -> SegmentedTasks:
        carry = self.checkpoints is not None and self.checkpoints.every > 0
        return SegmentedTasks(parts.dispatcher, self.seed, self.broadcast_latency, self.chunk,
                              carry)


@register("apsb", APSB)
def apsb_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """APSB's constructor arguments from a validated run config."""
    return {**alsgd_settings(config), "broadcast_latency": config["broadcast-latency"],
            "chunk": config["apsb-chunk"]}
