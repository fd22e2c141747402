"""The asynchronous loop every async strategy shares: keep M clients busy, fold in each update
as it lands (virtual-finish order or arrival order), re-dispatch from the newest model."""

from __future__ import annotations

import math
import time
from typing import Protocol

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Result

from asyncfl.engine import Completion
from asyncfl.engine.dispatch import (
    IdlePool,
    RestingClients,
    VersionStore,
    WholeTasks,
    backoff_seconds,
)
from asyncfl.engine.evaluation import EvaluateFn
from asyncfl.engine.model_state import ModelState
from asyncfl.engine.runner import Arrays, Rule, RunParts, needs_start
from asyncfl.protocol import WEIGHTS, TrainReply, arrays_to_record, record_to_arrays


def clients_in_flight(concurrency: int, num_clients: int) -> int:
    """M: `concurrency` clients, 0 meaning every client, never more than there are."""
    return min(concurrency or num_clients, num_clients)


class AsyncRule(Rule, Protocol):
    def fold(self, global_arrays: Arrays, update: Arrays, num_examples: float,
             staleness: int, client: int) -> Arrays | None:
        """Fold in one update of `client` (its index, 0..N-1) that is `staleness` versions
        old; the new global model if it made a new version, else None. A rule that
        buffers updates until a deadline (FedCompass) also has `aggregate(global_arrays,
        key)`, called when its tasks collaborator says the buffer `key` is due."""


class AsyncRunner:
    """Asynchronous training with `concurrency` (M; 0 = every client) clients in flight until
    `num_rounds` global versions exist.

    Where the rule needs the model a client started from (a weights reply for a rule on
    deltas, or a model with statistics), each version is kept only while some client in
    flight started from it: at most M versions. With a wall clock, a client whose task failed
    rests `retry_backoff` seconds (doubling with each fault in a row, at most MAX_BACKOFF),
    then is sent another; in virtual time a faulty client is sent its next task at once.
    `tasks` sends the work: one message per task, or APSB's segments and broadcasts. With
    `staleness_cutoff` R > 0 an update whose staleness is R or more is discarded (recorded as
    "stale", not a fault of its client) and the client is sent the newest model: Ringmaster
    ASGD's rule, which applies only gradients of delay < R.
    """

    def __init__(self, rule: AsyncRule, parts: RunParts, concurrency: int = 0,
                 retry_backoff: float = 0.0, tasks: WholeTasks | None = None,
                 staleness_cutoff: int = 0) -> None:
        self.rule, self.parts = rule, parts
        self.concurrency = concurrency
        self.staleness_cutoff = staleness_cutoff
        self.retry_backoff = retry_backoff
        self.tasks = tasks if tasks is not None else WholeTasks(parts.dispatcher)
        self.resting = RestingClients()

    def run(self, initial_arrays: ArrayRecord, num_rounds: int,
            evaluate_fn: EvaluateFn | None = None) -> Result:
        parts, loop, schedule = self.parts, self.parts.loop, self.parts.schedule
        result = self.result = Result(arrays=initial_arrays)
        schedule.bind(evaluate_fn, loop, parts.recorder, result, parts.federated,
                      lambda: self.idle.newest(self.in_flight), parts.evaluation_rng())
        self.applied_since: list[TrainReply] = []  # this version's updates, for its metrics
        self.arrays, self.version = initial_arrays, 0
        self.global_arrays = record_to_arrays(initial_arrays)
        self.state = ModelState(self.global_arrays)
        parts.guard.expect_model(self.global_arrays)
        resumed = parts.resume(self.rule, self.state)
        if resumed is not None:
            self.version, self.global_arrays = resumed["version"], resumed["global"]
            self.arrays = result.arrays = arrays_to_record(self.global_arrays)
            self.idle = IdlePool(resumed["idle"], parts.rng)
            for client, until in resumed.get("offline", {}).items():
                self.resting.rest(client, until)
            self.bases = resumed["bases"]
            self.tasks.restore(resumed["extra"])
        else:
            schedule.evaluate(0, self.arrays)
            self.idle = IdlePool(range(parts.num_clients), parts.rng)
            # kept for the kind asked for, and for weights (what a ClientApp that does not
            # know the protocol sends) until a reply shows the ClientApp follows it
            self.bases = VersionStore(self._needs_start(parts.reply_kind)
                                      or self._needs_start(WEIGHTS))
            self._refill()
        while self.version < num_rounds and not parts.should_stop():
            if not loop.in_flight:
                if not self.resting:
                    parts.no_client_left(self.version)
                    break
                wake = self.resting.next_wake()
                if loop.virtual:  # (clients offline until then)
                    loop.virtual_clock.advance_to(wake)
                else:
                    time.sleep(max(0.0, wake - loop.clock.now))
                self._refill()
                continue
            completion = loop.next_completion(
                wake_at=_earliest(self.resting.next_wake(), self.tasks.next_wake()))
            if completion is None:  # a rest is over, or a deadline came, before a reply
                self._aggregate_due(num_rounds)
                self._refill()
                continue
            if self.tasks.continued(completion, self.arrays, self.version):
                continue
            self.tasks.finished(completion)
            schedule.until(self.version, self.arrays, loop.clock.now)
            arrived_at = self.version
            self._fold(completion, num_rounds)
            self._aggregate_due(num_rounds)
            if self.version < num_rounds and not parts.should_stop():
                self._refill()
                if self.version > arrived_at and parts.checkpoint_due(self.version):
                    parts.save(self.version, self._snapshot(), self.rule, self.state,
                               self.tasks.snapshot())
            parts.recorder.progress(self.version, num_rounds, loop.virtual_clock.now)
        schedule.until(self.version, self.arrays, loop.clock.now, inclusive=True)
        result.arrays = self.arrays
        parts.finish(self.tasks.traffic(), self.bases.peak)
        return result

    def _snapshot(self) -> dict:
        """The loop's state for a checkpoint. In virtual time the resting clients are the
        offline ones, kept with the time they are back; a wall-clock rest after a fault does
        not outlive the process (they are idle again on resume)."""
        if self.parts.loop.virtual:
            idle, offline = self.idle.items(), self.resting.until()
        else:
            idle, offline = self.idle.items() + self.resting.clients(), {}
        return {"version": self.version, "global": self.global_arrays, "idle": idle,
                "offline": offline, "bases": self.bases}

    @property
    def in_flight(self) -> int:
        """M, over the run's clients now (nodes that joined count)."""
        return clients_in_flight(self.concurrency, self.parts.num_clients)

    def _needs_start(self, reply_kind: str) -> bool:
        return needs_start(reply_kind, self.rule.update_kind, bool(self.state.statistics))

    def _refill(self) -> None:
        """Send tasks from the newest model to idle clients until M are in flight (nodes that
        joined the run are idle clients)."""
        loop = self.parts.loop
        for client in self.resting.wake(loop.clock.now) + self.parts.joined_clients():
            self.idle.add(client)
        wanted = self.in_flight - loop.in_flight
        chosen = self.idle.take(wanted)
        if loop.availability is not None:
            chosen = self._online(chosen, wanted)
        held = [c for c in chosen if self.tasks.holds(c)]
        if held:
            for client in held:
                self.idle.add(client)
            chosen = [c for c in chosen if c not in held]
        sent = self.tasks.start(self.arrays, self.version, chosen)
        self.bases.dispatched(self.version, self.global_arrays, sent)

    def _online(self, chosen: list[int], wanted: int) -> list[int]:
        """Of the idle clients drawn, those online now, drawing more while some are not; an
        offline one waits (as a resting client) until it is back, or is gone for good."""
        loop, online = self.parts.loop, []
        while chosen:
            for client in chosen:
                back = loop.availability.next_online(client, loop.clock.now)
                if back == loop.clock.now:
                    online.append(client)
                elif back < math.inf:
                    self.resting.rest(client, back)
            chosen = self.idle.take(wanted - len(online))
        return online

    def _fold(self, completion: Completion, num_rounds: int) -> None:
        """Check a finished task's reply and fold it in; the client goes back to the idle
        pool (or rests, or stays dropped)."""
        parts, version = self.parts, self.version
        start = self.bases.returned(completion.tag)
        reply = parts.check(completion, self.global_arrays, version, start)
        if completion.client not in parts.guard.dropped:
            rest = (backoff_seconds(self.retry_backoff, parts.guard.faults[completion.client])
                    if reply is None and not parts.loop.virtual else 0.0)
            if rest > 0:
                self.resting.rest(completion.client, parts.loop.clock.now + rest)
            else:
                self.idle.add(completion.client)
        if reply is None:
            return
        parts.loop.phases.enter("aggregate")
        if reply.kind == parts.reply_kind:  # the ClientApp follows the protocol
            self.bases.enabled = self._needs_start(reply.kind)
        if start is None and self._needs_start(reply.kind):
            parts.recorder.rejected(completion, version, f"unusable reply: a {reply.kind} "
                                    "reply after the ClientApp had sent what it was asked")
            return
        staleness = version - completion.tag
        if self.staleness_cutoff and staleness >= self.staleness_cutoff:
            parts.recorder.rejected(completion, version, f"stale: {staleness} versions old, "
                                    f"staleness-cutoff {self.staleness_cutoff}")
            return
        examples = parts.weight(reply)
        self.state.add(reply.arrays, reply.kind, start, examples)
        update = parts.update(reply, self.rule, start)
        new = self.rule.fold(self.state.parameters(self.global_arrays),
                             self.state.parameters(update), examples, staleness,
                             completion.client)
        self.applied_since.append(reply)
        if new is not None:
            self._publish(new)
        parts.loop.phases.enter("bookkeeping")
        parts.recorder.applied_update(completion, reply.metrics, version, self.version,
                                      self.tasks.traffic())
        if self.version > version:
            self._evaluate(num_rounds)

    def _publish(self, new: Arrays) -> None:
        """Make the rule's `new` parameters the next global version."""
        parts = self.parts
        self.global_arrays = self.state.new_version(self.global_arrays, new)
        self.version += 1
        metrics = parts.train_metrics(self.applied_since)
        if metrics is not None:
            self.result.train_metrics_clientapp[self.version] = metrics
        self.applied_since = []
        parts.new_model(self.version, self.global_arrays)
        self.arrays = arrays_to_record(self.global_arrays)
        self.tasks.new_version(self.version, self.arrays)

    def _evaluate(self, num_rounds: int) -> None:
        last = self.version == num_rounds or self.parts.should_stop()
        self.parts.schedule.new_version(self.version, self.arrays, last)

    def _aggregate_due(self, num_rounds: int) -> None:
        """Aggregate the buffers the tasks say are due now (FedCompass's arrival groups)."""
        now = self.parts.loop.clock.now
        while self.version < num_rounds and (key := self.tasks.due(now)) is not None:
            self.parts.schedule.until(self.version, self.arrays, now)
            self.parts.loop.phases.enter("aggregate")
            new = self.rule.aggregate(self.state.parameters(self.global_arrays), key)
            if new is not None:
                self._publish(new)
                self._evaluate(num_rounds)


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
