"""The synchronous round loop every sync strategy shares."""

from __future__ import annotations

import math
from typing import Protocol

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from asyncfl.engine import Completion, EventLoop
from asyncfl.engine.availability import first_online
from asyncfl.engine.evaluation import EvaluateFn
from asyncfl.engine.model_state import ModelState
from asyncfl.engine.runner import Arrays, Rule, RunParts
from asyncfl.engine.utils import sample_clients
from asyncfl.protocol import TrainReply, arrays_to_record, record_to_arrays


class SyncRule(Rule, Protocol):
    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float]) -> Arrays:
        """The new global model from one round's checked updates (pure). A rule that keeps
        something per client (MIFA's memory) sets `by_client = True` and is also given
        `clients=`, the updates' client indices."""


class StepPlan(Protocol):
    """A hook for rules that choose each client's local steps per round (ESync's state
    server): steps for the round's clients, and what it learns from each applied reply."""

    def steps(self, server_round: int, clients: list[int], loop: EventLoop) -> dict[int, int]:
        ...

    def observe(self, client: int, metrics: MetricRecord) -> None:
        ...

    def snapshot(self) -> dict:
        ...

    def restore(self, state: dict) -> None:
        ...


class SyncRunner:
    """Rounds: sample round(C*N) clients (dropped ones never), send the global model, wait for
    every reply (or the round deadline), check them, apply the rule. In virtual time a round
    lasts as long as its slowest sampled client. With `round_timeout` > 0 a round ends that
    many seconds (on the run's clock) after it was sent, with what arrived; the clients that
    missed it are logged and count as faulty, like a task without a reply."""

    def __init__(self, rule: SyncRule, parts: RunParts, fraction: float = 1.0,
                 round_timeout: float = 0.0, step_plan: StepPlan | None = None,
                 min_nodes: int = 1) -> None:
        self.rule, self.parts = rule, parts
        self.fraction, self.round_timeout = fraction, round_timeout
        self.step_plan = step_plan
        self.min_nodes = min_nodes

    def run(self, initial_arrays: ArrayRecord, num_rounds: int,
            evaluate_fn: EvaluateFn | None = None) -> Result:
        parts, loop, schedule = self.parts, self.parts.loop, self.parts.schedule
        result = Result(arrays=initial_arrays)
        schedule.bind(evaluate_fn, loop, parts.recorder, result, parts.federated,
                      lambda: [c for c in range(parts.num_clients) if c not in parts.guard.dropped],
                      parts.evaluation_rng())
        arrays, global_arrays = initial_arrays, record_to_arrays(initial_arrays)
        state = ModelState(global_arrays)
        parts.guard.expect_model(global_arrays)
        first = 1
        resumed = parts.resume(self.rule, state)
        if resumed is not None:
            first, global_arrays = resumed["round"] + 1, resumed["global"]
            arrays = result.arrays = arrays_to_record(global_arrays)
            if self.step_plan is not None:
                self.step_plan.restore(resumed["extra"])
        else:
            schedule.evaluate(0, arrays)
        for server_round in range(first, num_rounds + 1):
            parts.joined_clients()  # sampled from this round on
            sampled = self._sample()
            if len(parts.guard.dropped) == parts.num_clients or sampled is None:
                parts.no_client_left(server_round - 1)
                break
            clients = [c for c in sampled if c not in parts.guard.dropped]
            steps = (self.step_plan.steps(server_round, clients, loop)
                     if self.step_plan is not None else None)
            parts.dispatcher.send(arrays, server_round - 1, clients, steps)
            deadline = loop.clock.now + self.round_timeout if self.round_timeout else None
            completions = loop.drain(deadline)
            schedule.until(server_round - 1, arrays, loop.clock.now)
            accepted = [(c, reply) for c in completions
                        if (reply := parts.check(c, global_arrays, server_round))]
            if self.step_plan is not None:  # (it checks the replies before they count)
                for completion, reply in accepted:
                    self.step_plan.observe(completion.client, reply.metrics)
            if accepted:
                global_arrays = self._combine(global_arrays, accepted, state)
                parts.new_model(server_round, global_arrays)
                arrays = result.arrays = arrays_to_record(global_arrays)
                metrics = parts.train_metrics([r for _, r in accepted])
                if metrics is not None:
                    result.train_metrics_clientapp[server_round] = metrics
            self._record(accepted, server_round)
            last = server_round == num_rounds or parts.should_stop()
            parts.recorder.progress(server_round, num_rounds, loop.virtual_clock.now)
            schedule.new_version(server_round, arrays, last)
            if last:
                schedule.until(server_round, arrays, loop.clock.now, inclusive=True)
            parts.save(server_round, {"round": server_round, "global": global_arrays},
                       self.rule, state, self.step_plan.snapshot() if self.step_plan else {})
            if last:
                break
        parts.finish(loop.traffic)
        return result

    def _sample(self) -> list[int] | None:
        """The round's clients: Flower's sample of C x N, among the clients online now if
        the run has an availability model (the clock moves on to the first one back if none
        is; None: none will ever be)."""
        parts, loop = self.parts, self.parts.loop
        if loop.availability is None:
            return sample_clients(parts.rng, parts.num_clients, self.fraction, self.min_nodes)
        candidates = [c for c in range(parts.num_clients) if c not in parts.guard.dropped]
        back = first_online(loop.availability, candidates, loop.clock.now)
        if back == math.inf:
            return None
        loop.virtual_clock.advance_to(back)
        online = [c for c in candidates if loop.availability.online(c, loop.clock.now)]
        return [online[i] for i in sample_clients(parts.rng, len(online), self.fraction,
                                                  self.min_nodes)]

    def _combine(self, global_arrays: Arrays, accepted: list[tuple[Completion, TrainReply]],
                 state: ModelState) -> Arrays:
        """The rule's new parameters and the statistics moved by the one rule for them."""
        self.parts.loop.phases.enter("aggregate")
        weights = [self.parts.weight(r) for _, r in accepted]
        updates = []
        for (_, reply), weight in zip(accepted, weights, strict=True):
            state.add(reply.arrays, reply.kind, global_arrays, weight)
            updates.append(state.parameters(self.parts.update(reply, self.rule, global_arrays)))
        by_client = ({"clients": [c.client for c, _ in accepted]}
                     if getattr(self.rule, "by_client", False) else {})
        parameters = self.rule.combine(state.parameters(global_arrays), updates, weights,
                                       **by_client)
        return state.new_version(global_arrays, parameters)

    def _record(self, accepted: list[tuple[Completion, TrainReply]], server_round: int) -> None:
        self.parts.loop.phases.enter("bookkeeping")
        for completion, reply in accepted:
            self.parts.recorder.applied_update(completion, reply.metrics, server_round - 1,
                                               server_round, self.parts.loop.traffic)

