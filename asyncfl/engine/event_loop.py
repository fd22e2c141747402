"""The event loop over a Flower Grid: dispatch tasks, apply replies in the clock's order.

Messages go out with `grid.push_messages` and come back through non-blocking
`grid.pull_messages`, so many tasks compute at once while the server decides the order in which
their replies take effect:

- virtual clock: a reply is applied at its virtual finish time (dispatch time + the delay
  model's task duration), in order of (finish, client); a reply is only released once no task
  still in flight could finish earlier. The result does not depend on arrival order.
- wall clock: replies are applied in the order they arrive, stamped with the wall clock.

Callers keep at most one task in flight per node (Flower's simulation loses `context.state`
otherwise); the loop checks it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from asyncfl.engine.availability import Availability
from asyncfl.engine.checkpoint import state_class
from asyncfl.engine.clocks import Clock, VirtualClock, WallClock
from asyncfl.engine.delays import DelayModel
from asyncfl.engine.phases import PhaseTimer
from asyncfl.protocol import message_bytes, reply_steps

MIN_REPLY_TIMEOUT = 60.0  # wall seconds: the automatic reply timeout is never shorter
REPLY_TIMEOUT_FACTOR = 10  # ... and is this many times the slowest task seen or expected
#: wall seconds a node's FIRST reply may take: the timeout of Flower's own strategies. A cold
#: start (Ray and its actors, a SuperNode's first ClientApp importing torch) took 40-100 s on a
#: loaded 2-core machine, longer than any floor learnt from tasks that were not seen yet.
FIRST_REPLY_TIMEOUT = 3600.0
WAIT_REPORT = 30.0  # wall seconds between "still waiting for ..." log lines
#: Flower's error codes for a task that got no reply (message or reply expired, node gone)
NO_REPLY_CODES = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                  ErrorCode.NODE_UNAVAILABLE)


@dataclass
class Dispatch:
    """One task in flight: who runs it, when it was sent, and what the strategy attached."""

    message_id: str
    node_id: int
    client: int
    task_number: int
    sent_virtual: float
    sent_wall: float
    steps: int | None
    bytes_down: int
    tag: Any = None
    priority: int = 0
    duration: float | None = None
    virtual_finish: float | None = None
    lost: bool = False  # its client went offline before it finished (see `availability`)
    reply: Message | None = None
    reply_size: int = 0
    arrived_wall: float = 0.0
    message: Message | None = None  # kept while in flight, for checkpoints


def _send_order(dispatch: Dispatch) -> tuple[float, int]:
    """Tasks in the order they were sent, ties by client."""
    return dispatch.sent_wall, dispatch.client


@state_class
@dataclass
class TaskTiming:
    """A task planned step by step at dispatch (for tasks sent in segments): offset k is when
    iteration k begins, in seconds from the task's start (offset K: compute done); the reply
    lands `duration` after the start (compute plus communication)."""

    client: int
    number: int
    start: float
    offsets: np.ndarray
    duration: float

    @property
    def steps(self) -> int:
        return len(self.offsets) - 1

    @property
    def end(self) -> float:
        return self.start + self.duration

    def segment_duration(self, first: int, stop: int) -> float:
        """Seconds from the start of iteration `first` until iteration `stop` begins, or
        until the reply lands when `stop` ends the task."""
        if stop == self.steps:
            return float(self.duration - self.offsets[first])
        return float(self.offsets[stop] - self.offsets[first])


# Dispatch fields a checkpoint keeps (the rest is rebuilt when the task is sent again)
SNAPSHOT_FIELDS = ("client", "task_number", "sent_virtual", "steps", "bytes_down",
                   "tag", "priority", "duration", "virtual_finish", "lost")


@dataclass
class Completion:
    """A finished task: the reply (None if the node never answered) and when it took effect,
    on the virtual clock (the delay model's time) and on the wall clock (real seconds)."""

    dispatch: Dispatch
    reply: Message | None
    virtual_time: float
    wall_time: float
    steps: int
    bytes_up: int
    missed_deadline: bool = False
    lost: bool = False  # the client went offline during the task (not its fault)

    @property
    def ok(self) -> bool:
        return self.reply is not None and not self.reply.has_error()

    @property
    def client(self) -> int:
        return self.dispatch.client

    @property
    def planned_steps(self) -> int | None:
        """The local steps the server asked of this task (not what the reply claims); None
        where the task names none (a ClientApp running its own epochs)."""
        return self.dispatch.steps

    @property
    def tag(self) -> Any:
        return self.dispatch.tag

    def sent_at(self, virtual: bool) -> float:
        """When the task was sent, on the virtual or the wall clock."""
        return self.dispatch.sent_virtual if virtual else self.dispatch.sent_wall

    def ended_at(self, virtual: bool) -> float:
        """When the task took effect, on the virtual or the wall clock."""
        return self.virtual_time if virtual else self.wall_time

    @property
    def failure_reason(self) -> str:
        if self.missed_deadline:
            return "missed the round deadline (round-timeout)"
        if self.lost:
            return "unavailable: the client went offline during its task"
        if self.reply is None:
            return "no reply before timeout"
        if self.reply.has_error():
            if self.reply.error.code in NO_REPLY_CODES:
                return f"no reply: {self.reply.error.reason}"
            return f"error reply: {self.reply.error.reason}"
        return ""


@state_class
@dataclass
class TrafficCounters:
    """Messages and serialized array bytes each way."""

    messages_sent: int = 0
    replies_received: int = 0
    bytes_down: int = 0
    bytes_up: int = 0

    @property
    def messages(self) -> int:
        return self.messages_sent + self.replies_received


@dataclass
class EventLoop:
    """Dispatch tasks on a Grid and hand back completions in the clock's order.

    Both clocks are kept in both modes: with a wall clock the virtual clock is a shadow that
    says what the delay model would have made of the same run.
    """

    grid: Grid
    clock: Clock
    delays: DelayModel
    poll_interval: float = 0.01
    #: wall seconds without any reply before the oldest task is given up; None or 0: automatic
    #: (see `reply_timeout`)
    timeout: float | None = None
    traffic: TrafficCounters = field(default_factory=TrafficCounters)
    #: where the server's time goes: the loop marks dispatching and waiting, callers the rest
    phases: PhaseTimer = field(default_factory=PhaseTimer)
    #: when clients are online (virtual time); None: always
    availability: Availability | None = None

    def __post_init__(self) -> None:
        self.virtual = isinstance(self.clock, VirtualClock)
        self.virtual_clock = self.clock if self.virtual else VirtualClock()
        self.wall_clock = self.clock if not self.virtual else WallClock()
        self._in_flight: dict[str, Dispatch] = {}
        self._busy_nodes: set[int] = set()
        # heap of (finish, priority, client, seq, message id)
        self._known: list[tuple[float, int, int, int, str]] = []
        self._unknown: set[str] = set()  # in flight, virtual finish depends on the reply
        self._waiting: set[str] = set()  # in flight, reply not pulled yet
        self._arrived: dict[str, Dispatch] = {}
        self._task_numbers: dict[int, int] = {}
        self._seq = itertools.count()
        self.ignored_replies = 0
        # wall seconds from dispatch to reply, the most seen (a node's first reply, which
        # includes its runtime's start, not counted)
        self._slowest_reply = 0.0
        self._answered_nodes: set[int] = set()  # nodes that replied at least once

    def reply_timeout(self) -> float:
        """Wall seconds without any reply after which the oldest task is given up: `timeout`
        if set; for a node that never replied yet, FIRST_REPLY_TIMEOUT (its runtime may still
        be starting); else ten times the slowest task so far (from dispatch to reply) or, with
        a wall clock, expected by the delay model for the oldest task in flight; at least a
        minute."""
        if self.timeout:
            return self.timeout
        oldest = self._oldest_waiting() if self._waiting else None
        if oldest is not None and oldest.node_id not in self._answered_nodes:
            return FIRST_REPLY_TIMEOUT
        expected = self._slowest_reply
        if not self.virtual and oldest is not None:
            expected = max(expected, self.delays.task_time(
                oldest.client, oldest.steps or 0, oldest.task_number, oldest.bytes_down,
                oldest.bytes_down))
        return max(MIN_REPLY_TIMEOUT, REPLY_TIMEOUT_FACTOR * expected)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def busy(self, node_id: int) -> bool:
        return node_id in self._busy_nodes

    def step_times(self, client: int, steps: int) -> np.ndarray:
        """The durations of the first `steps` steps of the client's next task (a longer call
        extends a shorter one), for a rule that plans step counts from them (ESync)."""
        return self.delays.step_times_of_task(client, self._task_numbers.get(client, 0), steps)

    def plan_task(self, client: int, steps: int, model_bytes: int) -> TaskTiming:
        """Start the client's next task of `steps` steps, to be sent in segments with
        `send_segment`; its timing is fixed now (a model down and a model-sized reply up)."""
        times = self.step_times(client, steps)
        number = self._next_task_number(client)
        return TaskTiming(client, number, self.virtual_clock.now,
                          np.concatenate([[0.0], np.cumsum(times)]),
                          float(times.sum())
                          + self.delays.comm_time(client, model_bytes, model_bytes))

    def send_segment(self, message: Message, plan: TaskTiming, first: int, stop: int,
                     tag: Any, model_bytes: int) -> Dispatch:
        """Push iterations [first, stop) of a planned task. Among replies due at the same
        virtual time a task's last segment comes before continuations."""
        final = stop == plan.steps
        (dispatch,) = self._push([(message, plan.client, stop - first, tag)], model_bytes,
                                 task_number=plan.number,
                                 duration=plan.segment_duration(first, stop),
                                 priority=0 if final else 1)
        return dispatch

    def send(
        self, items: Iterable[tuple[Message, int, int | None, Any]],
        model_bytes: int | None = None,
    ) -> list[Dispatch]:
        """Push (message, client, steps or None, tag) items in one batch, each a new task.

        `steps` known at dispatch fixes the virtual finish time now; None lets the reply's
        `local-steps` metric decide it. `model_bytes`, if the caller knows it, is the array
        size of every message of the batch (the delay model charges a reply of that size too).
        """
        return self._push(items, model_bytes)

    def _next_task_number(self, client: int) -> int:
        number = self._task_numbers.get(client, 0)
        self._task_numbers[client] = number + 1
        return number

    def _push(
        self, items: Iterable[tuple[Message, int, int | None, Any]], model_bytes: int | None,
        task_number: int | None = None, duration: float | None = None, priority: int = 0,
    ) -> list[Dispatch]:
        self.phases.enter("dispatch")
        items = list(items)
        for message, _, _, _ in items:
            if message.metadata.dst_node_id in self._busy_nodes:
                raise RuntimeError(
                    f"node {message.metadata.dst_node_id} already has a task in flight"
                )
        ids = list(self.grid.push_messages([item[0] for item in items]))
        if len(ids) != len(items):
            raise RuntimeError(f"the Grid accepted {len(ids)} of {len(items)} messages")
        now_virtual, now_wall = self.virtual_clock.now, self.wall_clock.now
        sent = []
        for message_id, (message, client, steps, tag) in zip(ids, items, strict=True):
            down = message_bytes(message) if model_bytes is None else model_bytes
            dispatch = Dispatch(
                message_id=message_id,
                node_id=message.metadata.dst_node_id,
                client=client,
                task_number=(self._next_task_number(client) if task_number is None
                             else task_number),
                sent_virtual=now_virtual,
                sent_wall=now_wall,
                steps=steps,
                bytes_down=down,
                tag=tag,
                priority=priority,
                duration=duration,
            )
            dispatch.message = message
            self._in_flight[message_id] = dispatch
            self._waiting.add(message_id)
            self._busy_nodes.add(dispatch.node_id)
            if steps is not None or duration is not None:
                self._set_virtual_finish(dispatch, steps)
            else:
                self._unknown.add(message_id)
            self.traffic.messages_sent += 1
            self.traffic.bytes_down += down
            sent.append(dispatch)
        return sent

    def snapshot(self) -> dict:
        """Everything needed to carry on after a restart: the clock, task counters, traffic,
        and every task in flight with the content of its message."""
        tasks = []
        for dispatch in self._in_flight.values():
            message = dispatch.message
            assert message is not None
            tasks.append({
                **{name: getattr(dispatch, name) for name in SNAPSHOT_FIELDS},
                "message_type": message.metadata.message_type,
                "group_id": message.metadata.group_id,
                "content": message.content,
            })
        return {"virtual_now": self.virtual_clock.now, "task_numbers": dict(self._task_numbers),
                "traffic": self.traffic, "ignored": self.ignored_replies, "tasks": tasks}

    def restore(self, snapshot: dict, node_of_client: Callable[[int], int]) -> None:
        """Continue from a snapshot: send every task that was in flight again, with its
        original timing, so its reply lands where it would have (virtual time)."""
        self.virtual_clock.now = snapshot["virtual_now"]
        self.traffic = snapshot["traffic"]
        self.ignored_replies = snapshot["ignored"]
        for task in snapshot["tasks"]:
            message = Message(task["content"], node_of_client(task["client"]),
                              task["message_type"], group_id=task["group_id"])
            (message_id,) = self.grid.push_messages([message])
            fields = {name: task[name] for name in SNAPSHOT_FIELDS if name in task}
            dispatch = Dispatch(message_id=message_id, node_id=message.metadata.dst_node_id,
                                sent_wall=self.wall_clock.now, message=message, **fields)
            self._in_flight[message_id] = dispatch
            self._waiting.add(message_id)
            self._busy_nodes.add(dispatch.node_id)
            if dispatch.virtual_finish is not None and self.virtual:
                heapq.heappush(self._known, (dispatch.virtual_finish, dispatch.priority,
                                             dispatch.client, next(self._seq), message_id))
            else:
                self._unknown.add(message_id)
        self._task_numbers = dict(snapshot["task_numbers"])

    def next_completion(
        self, deadline: float | None = None, wake_at: float | None = None
    ) -> Completion | None:
        """Block until the next reply in the clock's order is available, and return it.

        With a `deadline` (seconds on the run's clock), a task that has not finished by then
        comes back at once as missed: in virtual time one whose finish lies beyond it, with a
        wall clock one still unanswered when the clock passes it. With `wake_at`, return None
        once the clock passes it with nothing ready (in virtual time: when no task can finish
        before it, the clock moved to it): the caller has work then."""
        if not self._in_flight:
            raise RuntimeError("no task in flight")
        self.phases.enter("wait")
        waited_since = reported = time.monotonic()
        while True:
            late = self._late(deadline)
            if late is not None:  # its reply is not even asked for
                return self._miss_deadline(late, deadline)
            if self._pull():
                waited_since = time.monotonic()
            if wake_at is not None and self.virtual and self._nothing_before(wake_at):
                self.virtual_clock.advance_to(wake_at)
                return None
            ready = self._ready_virtual() if self.virtual else self._ready_wall()
            if ready is not None:
                if self.virtual and deadline is not None and ready.virtual_finish > deadline:
                    return self._miss_deadline(ready, deadline)
                return self._complete(ready)
            if wake_at is not None and not self.virtual and self.wall_clock.now >= wake_at:
                return None
            if not self.virtual and deadline is not None and self.wall_clock.now > deadline:
                if self._pull(everything=True):
                    continue
                return self._miss_deadline(self._oldest_waiting(), self.virtual_clock.now)
            waited, timeout = time.monotonic() - waited_since, self.reply_timeout()
            if waited > timeout:
                if self._pull(everything=True):  # replies not asked for yet are not late
                    waited_since = time.monotonic()
                    continue
                return self._give_up(self._oldest_waiting())
            if time.monotonic() - reported > min(WAIT_REPORT, timeout / 2):
                reported = time.monotonic()
                self._report_wait(waited, timeout)
            time.sleep(self.poll_interval)

    def _report_wait(self, waited: float, timeout: float) -> None:
        """Say what the run waits for: before the first reply a runtime is still starting its
        ClientApps (Ray's workers, importing torch, loading data), which is no fault."""
        pending = sorted((self._in_flight[mid] for mid in self._waiting), key=_send_order)
        first = not self._answered_nodes
        log(INFO if first else WARNING, "%s for %.0f s; waiting for client(s) %s (nodes %s); the "
            "oldest task is given up after %.3g s without any reply (reply-timeout)",
            "no reply yet: the ClientApps are starting" if first else "no reply", waited,
            [d.client for d in pending][:10], [d.node_id for d in pending][:10], timeout)

    def drain(self, deadline: float | None = None) -> list[Completion]:
        """Completions of every task in flight, in the clock's order (one synchronous round);
        with a `deadline`, those not done by then come back as missed."""
        return [self.next_completion(deadline) for _ in range(self.in_flight)]

    def _nothing_before(self, t: float) -> bool:
        """In virtual time, whether no task in flight can finish before t."""
        return not self._unknown and (not self._known or self._known[0][0] > t)

    def _late(self, deadline: float | None) -> Dispatch | None:
        """In virtual time, the next task if it is known to finish after `deadline`."""
        if (not self.virtual or deadline is None or self._unknown or not self._known
                or self._known[0][0] <= deadline):
            return None
        return self._in_flight[self._known[0][-1]]

    def _miss_deadline(self, dispatch: Dispatch, virtual_time: float) -> Completion:
        """Give up a task at the deadline (`virtual_time`), even if its reply is in."""
        dispatch.virtual_finish = virtual_time
        dispatch.reply = None
        dispatch.reply_size = 0
        return replace(self._give_up(dispatch), missed_deadline=True)

    def _set_virtual_finish(self, dispatch: Dispatch, steps: int | None) -> None:
        duration = dispatch.duration
        if duration is None:
            # the model down, a model-sized reply up
            duration = self.delays.task_time(dispatch.client, steps or 0, dispatch.task_number,
                                             dispatch.bytes_down, dispatch.bytes_down)
        dispatch.virtual_finish = dispatch.sent_virtual + duration
        if self.availability is not None and self.virtual:
            offline = self.availability.next_offline(dispatch.client, dispatch.sent_virtual)
            if offline < dispatch.virtual_finish:  # lost when its client leaves
                dispatch.virtual_finish, dispatch.lost = offline, True
        if self.virtual:
            entry = (dispatch.virtual_finish, dispatch.priority, dispatch.client,
                     next(self._seq), dispatch.message_id)
            heapq.heappush(self._known, entry)

    def _pull_ids(self, everything: bool = False) -> list[str]:
        """Replies worth asking for: in virtual time only those that decide what comes next."""
        if everything or not self.virtual:
            return list(self._waiting)
        ids = [mid for mid in self._unknown if mid in self._waiting]
        if self._known and self._known[0][-1] in self._waiting:
            ids.append(self._known[0][-1])
        return ids

    def _pull(self, everything: bool = False) -> bool:
        ids = self._pull_ids(everything)
        if not ids:
            return False
        replies = list(self.grid.pull_messages(ids))
        stamp = time.monotonic()
        for reply in replies:
            message_id = reply.metadata.reply_to_message_id
            if message_id not in self._waiting:  # not ours, or a duplicate: never applied
                self.ignored_replies += 1
                log(WARNING, "ignored a reply to message %s: unknown or already answered",
                    message_id)
                continue
            dispatch = self._in_flight[message_id]
            self._waiting.discard(message_id)
            dispatch.reply = reply
            dispatch.reply_size = message_bytes(reply)
            dispatch.arrived_wall = stamp
            if dispatch.node_id in self._answered_nodes:
                self._slowest_reply = max(self._slowest_reply,
                                          self.wall_clock.now - dispatch.sent_wall)
            self._answered_nodes.add(dispatch.node_id)
            self._arrived[message_id] = dispatch
            self.traffic.replies_received += 1
            self.traffic.bytes_up += dispatch.reply_size
            if message_id in self._unknown:
                self._unknown.discard(message_id)
                self._set_virtual_finish(dispatch, reply_steps(reply, dispatch.steps))
        return bool(replies)

    def _ready_virtual(self) -> Dispatch | None:
        if self._unknown or not self._known:
            return None
        message_id = self._known[0][-1]
        if message_id not in self._arrived:
            return None
        heapq.heappop(self._known)
        return self._in_flight[message_id]

    def _ready_wall(self) -> Dispatch | None:
        if not self._arrived:
            return None
        return min(self._arrived.values(), key=lambda d: (d.arrived_wall, d.client))

    def _complete(self, dispatch: Dispatch) -> Completion:
        self._in_flight.pop(dispatch.message_id)
        self._arrived.pop(dispatch.message_id, None)
        self._unknown.discard(dispatch.message_id)
        self._waiting.discard(dispatch.message_id)
        self._busy_nodes.discard(dispatch.node_id)
        dispatch.message = None
        reply = dispatch.reply
        if dispatch.virtual_finish is None:  # a task that never answered, steps unknown
            dispatch.virtual_finish = self.virtual_clock.now
        self.virtual_clock.advance_to(dispatch.virtual_finish)
        return Completion(
            dispatch=dispatch,
            reply=None if dispatch.lost else reply,
            lost=dispatch.lost,
            virtual_time=dispatch.virtual_finish,
            wall_time=self.wall_clock.now,
            steps=reply_steps(reply, dispatch.steps) if reply is not None else 0,
            bytes_up=dispatch.reply_size,
        )

    def _oldest_waiting(self) -> Dispatch:
        """The unanswered task sent first (ties by client): the one to give up on."""
        return min((self._in_flight[mid] for mid in self._waiting), key=_send_order)

    def _give_up(self, dispatch: Dispatch) -> Completion:
        """Complete a task without (or regardless of) its reply: it leaves the virtual-time
        order, and a reply that comes later is ignored."""
        self._known = [entry for entry in self._known if entry[-1] != dispatch.message_id]
        heapq.heapify(self._known)
        return self._complete(dispatch)

