"""FedCompass: a computing-power-aware scheduler that gives each client the local steps that
make groups of clients arrive together (Li et al., "FedCompass: Efficient Cross-Silo Federated
Learning on Heterogeneous Client Devices Using a Computing Power-Aware Scheduler", ICLR 2024).

Three parts, as every asyncfl strategy: `CompassScheduler` (the arrival groups and the step
counts, a pure function of the speeds and the time it is told), `FedCompassRule` (the server's
math) and `FedCompass` (the Flower class), glued to the asynchronous loop by `CompassTasks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from asyncfl.engine import Completion, arguments
from asyncfl.engine.base import AsyncStrategy
from asyncfl.engine.checkpoint import state_class
from asyncfl.engine.dispatch import Dispatcher, WholeTasks, seconds_per_step
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA, LOCAL_STEPS
from asyncfl.strategies.blocks import StalenessFn, staleness_arg, staleness_setting
from asyncfl.strategies.registry import async_settings, register

# relative slack when dividing times into steps, so 0.3 / 0.1 counts as 3 steps in floats
_TIE = 1e-9
#: where an update whose group was aggregated before it came waits for the next aggregation
LATE = -1


@state_class
@dataclass
class ArrivalGroup:
    """Clients the scheduler expects back at about the same time."""

    opened: float  # when its first members were sent their tasks
    expected: float | None  # T_g; None until the first arrival of a group of new clients
    latest: float | None  # L_g: when the server stops waiting for its members
    pending: list[int] = field(default_factory=list)  # sent, not back yet
    arrived: list[int] = field(default_factory=list)  # back, waiting for the aggregation
    closed: bool = False  # aggregated: nobody joins it any more


@state_class
@dataclass
class CompassScheduler:
    r"""COMPASS, the server's scheduler. It keeps t_i, each client's seconds per local step
    (an exponential average, weight `speed_momentum` on the newest measurement), and arrival
    groups g with an expected time T_g and a latest time L_g. A client that is to be sent a
    task at time `now` joins the open group in which it can do the most steps,

    .. math::
        Q_i = \max_g \lfloor (T_g - \text{now}) / t_i \rfloor
        \quad \text{over the groups with } Q_{\min} \le Q_i \le Q_{\max},

    or, when none fits, opens a new group it would reach with Q_i steps, chosen so the new
    group lands one fastest-member task after an open group's latest time (the largest such
    Q_i <= Q_max, at least Q_min; Q_max when there is none), with T = now + Q_i t_i and
    L = now + lambda Q_i t_i. Clients assigned together are taken fastest first.

    Clients whose speed is not known yet (the first tasks, a new client) get Q_max steps and
    form one group together; its T is its first arrival and L = opened + lambda (T - opened).
    (The paper's reference implementation applies each first update alone instead; a group
    makes the first round FedAvg's when speeds are equal, as every later one is.)

    A group closes (is aggregated) when its last pending member is back or lost, or at L_g,
    whichever comes first; a member back after its group closed is late: its update waits
    for the next aggregation and it is sent the newest model at once.
    """

    q_max: int
    q_min: int
    latest_factor: float
    speed_momentum: float
    speed: dict[int, float] = field(default_factory=dict)
    group_of: dict[int, int] = field(default_factory=dict)  # a task in flight's group
    placement: dict[int, int] = field(default_factory=dict)  # where its last update went
    groups: dict[int, ArrivalGroup] = field(default_factory=dict)
    next_group: int = 0

    def observe(self, client: int, step_time: float) -> None:
        """A measured t_i (seconds per step of the client's latest task)."""
        old = self.speed.get(client)
        self.speed[client] = (step_time if old is None else
                              (1 - self.speed_momentum) * old + self.speed_momentum * step_time)

    def assign(self, clients: Iterable[int], now: float) -> dict[int, int]:
        """Q_i for each client sent a task now (those never measured first)."""
        clients = list(clients)
        new = [c for c in clients if c not in self.speed]
        steps = dict.fromkeys(new, self.q_max)
        if new:
            self._add_group(ArrivalGroup(now, None, None), new)
        for client in sorted((c for c in clients if c in self.speed),
                             key=lambda c: self.speed[c]):
            steps[client] = self._join(client, now) or self._open(client, now)
        return steps

    def _steps_until(self, seconds: float, client: int) -> int:
        """The whole steps of the client's that fit in `seconds` (Q_max if they take none)."""
        t = self.speed[client]
        if t <= 0:
            return self.q_max if seconds >= 0 else 0
        return math.floor(seconds / t * (1 + _TIE))

    def _join(self, client: int, now: float) -> int:
        """The most steps with which the client reaches an open group in time (0: none)."""
        best, chosen = 0, None
        for g, group in self.groups.items():
            if group.closed or group.expected is None:
                continue
            q = self._steps_until(group.expected - now, client)
            if self.q_min <= q <= self.q_max and q > best:
                best, chosen = q, g
        if chosen is not None:
            self.groups[chosen].pending.append(client)
            self.group_of[client] = chosen
        return best

    def _open(self, client: int, now: float) -> int:
        """Open a new group for the client; its steps."""
        t = self.speed[client]
        fits = []
        for group in self.groups.values():
            if group.closed or group.latest is None or now >= group.latest:
                continue
            fastest = min(self.speed.get(c, t) for c in group.pending + group.arrived)
            q = self._steps_until(group.latest + fastest * self.q_max - now, client)
            if q <= self.q_max:
                fits.append(q)
        q = max(self.q_min, max(fits)) if fits else self.q_max
        self._add_group(ArrivalGroup(now, now + q * t, now + self.latest_factor * q * t),
                        [client])
        return q

    def _add_group(self, group: ArrivalGroup, clients: list[int]) -> None:
        group.pending = list(clients)
        self.groups[self.next_group] = group
        self.group_of.update(dict.fromkeys(clients, self.next_group))
        self.next_group += 1

    def arrived(self, client: int, now: float, ok: bool) -> None:
        """The client's task ended at `now` (`ok`: with a reply). Its update's place: its
        group while that is open, the late buffer after."""
        self.placement.pop(client, None)
        g = self.group_of.pop(client)
        group = self.groups[g]
        group.pending.remove(client)
        if ok and group.expected is None:  # the first of a group of new clients
            group.expected = now
            group.latest = group.opened + self.latest_factor * (now - group.opened)
        if ok and not group.closed and now <= group.latest:
            group.arrived.append(client)
            self.placement[client] = g
        elif ok:
            self.placement[client] = LATE
        self._forget(g)

    def waiting(self, client: int) -> bool:
        """Whether the client is back in a group that has not been aggregated yet."""
        g = self.placement.get(client, LATE)
        return g != LATE and not self.groups[g].closed

    def due(self, now: float) -> int | None:
        """Close and return an open group to aggregate now: all its members are back (or
        lost), or its latest time has come, and at least one of them arrived; its members
        are free to be sent tasks again. None: nothing to aggregate."""
        for g, group in list(self.groups.items()):
            if group.closed or (group.pending and (group.latest is None or now < group.latest)):
                continue
            group.closed = True
            members, group.arrived = group.arrived, []
            for client in members:
                del self.placement[client]
            self._forget(g)
            if members:
                return g
        return None

    def next_deadline(self) -> float | None:
        """The earliest latest time of an open group that is waiting for someone."""
        times = [g.latest for g in self.groups.values()
                 if not g.closed and g.arrived and g.pending]
        return min(times) if times else None

    def _forget(self, g: int) -> None:
        group = self.groups[g]
        if group.closed and not group.pending and not group.arrived:
            del self.groups[g]


class FedCompassRule:
    r"""The server's step. Updates wait in their group's buffer (or the late buffer) until
    the group closes. Then, with B the group's and the late buffer's deltas Delta_i (each
    client's model minus the one it started from, tau_i versions ago), N the clients, alpha
    the mixing weight and s the staleness weight:

    .. math::
        w \leftarrow w + \sum_{i \in B} \frac{\alpha \, s(\tau_i)}{N} \Delta_i

    so each client moves the model by its 1/N share (uniform, as in the paper's reference
    implementation, APPFL, whose gradient-based form this is: a stale client adds its own
    progress instead of pulling the model back toward the old one it started from). With
    equal speeds, alpha = 1 and s = 1 every round is one group of all N clients, all fresh,
    and the step is FedAvg's uniform average.

    Example:
        >>> import numpy as np
        >>> rule = FedCompassRule(CompassScheduler(4, 1, 1.5, 0.9), 1.0, lambda tau: 1.0, 2)
        >>> rule.scheduler.placement.update({0: 0, 1: 0})
        >>> rule.fold({"x": np.array([1.0])}, {"x": np.array([2.0])}, 1, 0, 0)
        >>> rule.fold({"x": np.array([1.0])}, {"x": np.array([4.0])}, 1, 0, 1)
        >>> rule.aggregate({"x": np.array([1.0])}, 0)
        {'x': array([4.])}
    """

    update_kind = DELTA
    state_fields = ("scheduler", "buffers", "version")

    def __init__(self, scheduler: CompassScheduler, mixing: float, staleness: StalenessFn,
                 num_clients: int) -> None:
        self.scheduler = scheduler
        self.mixing = arguments.number("mixing", mixing, "a number in (0, 1]",
                                       lambda a: 0 < a <= 1)
        self.staleness = staleness
        self.num_clients = num_clients
        #: group (or LATE) -> [(version the update started from, its model)]
        self.buffers: dict[int, list] = {}
        self.version = 0

    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        g = self.scheduler.placement.get(client, LATE)
        self.buffers.setdefault(g, []).append((self.version - staleness, update))
        return None

    def aggregate(self, global_arrays: Arrays, g: int) -> Arrays | None:
        """The new model from group g's updates and the late ones (None if there are none)."""
        updates = self.buffers.pop(g, []) + self.buffers.pop(LATE, [])
        return self._step(global_arrays, updates) if updates else None

    def _step(self, global_arrays: Arrays, updates: list) -> Arrays:
        shares = [self.mixing * self.staleness(self.version - started) / self.num_clients
                  for started, _ in updates]
        self.version += 1
        new = {}
        for key, value in global_arrays.items():
            moved = value.astype(np.float64)
            moved = moved + sum(share * u[key].astype(np.float64)
                                for share, (_, u) in zip(shares, updates, strict=True))
            new[key] = moved.astype(value.dtype)
        return new


class CompassTasks(WholeTasks):
    """Sends FedCompass's tasks: each with the steps `CompassScheduler` assigns; holds a
    client that is back in an open group until the group is aggregated; tells the loop when
    a group's latest time comes (`next_wake`) and which group to aggregate (`due`)."""

    def __init__(self, dispatcher: Dispatcher, rule: FedCompassRule) -> None:
        super().__init__(dispatcher)
        self.rule = rule

    @property
    def scheduler(self) -> CompassScheduler:  # (the rule's: a resumed run restores it)
        return self.rule.scheduler

    def holds(self, client: int) -> bool:
        return self.scheduler.waiting(client)

    def start(self, arrays: ArrayRecord, version: int, clients: Iterable[int]) -> int:
        steps = self.scheduler.assign(list(clients), self.dispatcher.loop.clock.now)
        return self.dispatcher.send(arrays, version, list(steps), steps)

    def finished(self, completion: Completion) -> None:
        step_time = seconds_per_step(completion, self.dispatcher.loop.virtual)
        if step_time is not None:
            self.scheduler.observe(completion.client, step_time)
        self.scheduler.arrived(completion.client, completion.ended_at(
            self.dispatcher.loop.virtual), completion.ok)

    def next_wake(self) -> float | None:
        return self.scheduler.next_deadline()

    def due(self, now: float) -> int | None:
        return self.scheduler.due(now)


class FedCompass(AsyncStrategy):
    """FedCompass: every client always has a task (semi-asynchronous, cross-silo); the
    server gives each the local steps that bring it back with a group of others
    (`CompassScheduler`), aggregates a group when it is complete or at its latest time
    (`FedCompassRule`), and sends its members their next tasks from the new model. Q_max
    is the run's `local-steps` (the train config's), Q_min = max(1, round(q_ratio Q_max)).

    A ClientApp must run the `local-steps` it is sent (asyncfl's ClientApp and
    `asyncfl.client`'s helper do); one that ignores them still trains correctly, but its
    measured speed is per assigned step, so its group arrives less together.

    Args:
        mixing: alpha, the weight of a fresh update, in (0, 1] (0.9 is APPFL's).
            Default: 0.9.
        staleness: s(tau), a name ("constant", "polynomial", "hinge", with a = 0.5, b = 4)
            or a function; None means polynomial with a = 0.5. Default: None.
        q_ratio: Q_min / Q_max, in (0, 1]. Default: 0.2.
        latest_factor: lambda >= 1: a group waits up to lambda times its expected task time.
            Default: 1.5.
        speed_momentum: the weight of the newest measured seconds per step in t_i, in
            (0, 1]. Default: 0.9.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, availability, guard, ...), `retry_backoff` and
            `staleness_cutoff` (`AsyncStrategy`). Every client is in flight (concurrency 0).

    Example:
        >>> FedCompass(q_ratio=0.5).q_ratio
        0.5
    """

    reply_kind = DELTA

    def __init__(self, mixing: float = 0.9, *, staleness: str | StalenessFn | None = None,
                 q_ratio: float = 0.2, latest_factor: float = 1.5,
                 speed_momentum: float = 0.9, **options: Any) -> None:
        super().__init__(0, **options)
        self.mixing = mixing
        self.staleness = staleness_arg(staleness)
        self.q_ratio = arguments.number("q_ratio", q_ratio, "a number in (0, 1]",
                                        lambda q: 0 < q <= 1)
        self.latest_factor = arguments.number("latest_factor", latest_factor,
                                              "a number >= 1", lambda x: x >= 1)
        self.speed_momentum = arguments.number("speed_momentum", speed_momentum,
                                               "a number in (0, 1]", lambda b: 0 < b <= 1)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> FedCompassRule:
        q_max = 1
        if parts is not None:
            q_max = int(parts.dispatcher.settings.get(LOCAL_STEPS, 0))
            if q_max < 1:
                raise ValueError("FedCompass assigns local steps: train_config needs "
                                 f"local-steps >= 1 (Q_max; got {q_max})")
        scheduler = CompassScheduler(q_max, max(1, round(self.q_ratio * q_max)),
                                     self.latest_factor, self.speed_momentum)
        return FedCompassRule(scheduler, self.mixing, self.staleness,
                              parts.num_clients if parts is not None else 1)

    def tasks(self, parts: RunParts) -> CompassTasks:
        return CompassTasks(parts.dispatcher, self.rule)


@register("fedcompass", FedCompass)
def fedcompass_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """FedCompass's constructor arguments from a validated run config."""
    settings = async_settings(config)
    settings.pop("concurrency")
    return {**settings, "mixing": config["compass-alpha"],
            "q_ratio": config["compass-q-ratio"], "latest_factor": config["compass-lambda"],
            "staleness": staleness_setting(config)}
