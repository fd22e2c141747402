"""What the sync and the async runner share: the run's collaborators, the shape of a rule, and
turning a checked reply into the update a rule takes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Protocol

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from asyncfl.engine import Completion, EventLoop, TrafficCounters
from asyncfl.engine.availability import online_windows
from asyncfl.engine.checkpoint import Checkpointer
from asyncfl.engine.dispatch import Dispatcher
from asyncfl.engine.evaluation import (
    EvaluationSchedule,
    FederatedEvaluation,
    MetricsAggregationFn,
)
from asyncfl.engine.guard import NoClientLeftError, ReplyGuard, SettingCheck
from asyncfl.engine.model_state import ModelState
from asyncfl.engine.nodes import NodeWatch
from asyncfl.engine.recorder import RunRecorder, RunTotals
from asyncfl.engine.utils import MAX_EXAMPLES
from asyncfl.protocol import (
    BATCH_SIZE,
    DELTA,
    GRADIENT,
    LOCAL_STEPS,
    METRICS,
    NUM_EXAMPLES,
    STEPS,
    WEIGHTS,
    TrainReply,
    metric_record,
)

Arrays = dict[str, np.ndarray]


def weighted_metrics(records: list[MetricRecord], weighting_key: str) -> MetricRecord:
    """Flower's `aggregate_metricrecords` of replies holding one MetricRecord each, without a
    RecordDict per reply: the same sums in the same order, so the same floats (and the same
    errors: a missing weight, a zero total, lists of different lengths)."""
    weights = [record[weighting_key] for record in records]
    total = sum(weights)
    factors = [w / total for w in weights]
    out: dict[str, Any] = {}
    for record, weight in zip(records, factors, strict=True):
        for key, value in record.items():
            if key == weighting_key:
                continue
            if key not in out:
                out[key] = [v * weight for v in value] if isinstance(value, list) else (
                    value * weight)
            elif isinstance(value, list):
                out[key] = [c + v * weight for c, v in zip(out[key], value, strict=True)]
            else:
                out[key] = out[key] + value * weight
    return metric_record(out)


class Rule(Protocol):
    """What every rule declares: the update it takes (`weights`, `delta` or `gradient`) and
    the attributes holding its state between updates (saved in checkpoints)."""

    update_kind: str
    state_fields: tuple[str, ...]


def needs_start(reply_kind: str, rule_kind: str, statistics: bool = False) -> bool:
    """Whether turning a `reply_kind` reply into a `rule_kind` update needs the model the
    client started from (a weights reply also needs it for the model's statistics)."""
    if reply_kind == rule_kind:
        return reply_kind == WEIGHTS and statistics
    return WEIGHTS in (reply_kind, rule_kind)


def rule_update(update: Arrays, reply_kind: str, rule_kind: str, start: Arrays | None,
                lr: float | None = None) -> Arrays:
    r"""A reply's arrays as the update the rule takes, from the model the client started
    from (`start`) and the client's learning rate `lr`:

    .. math::
        \Delta = w_{end} - w_{start}, \qquad g = -\Delta / \eta

    A gradient from weights or a delta is the pseudo-gradient: exactly the gradient for one
    plain SGD step, the usual pseudo-gradient for anything else (local epochs, momentum).
    """
    if reply_kind == rule_kind:
        return update
    if WEIGHTS in (reply_kind, rule_kind) and start is None:
        raise ValueError(f"a {reply_kind!r} reply became a {rule_kind!r} update without the "
                         "model the client started from")
    if GRADIENT in (reply_kind, rule_kind) and not lr:
        raise ValueError(
            f"the rule takes {rule_kind!r} but the ClientApp returned {reply_kind!r}: the "
            "server needs the clients' learning rate to convert it; put it in train_config "
            "as 'lr'")
    if reply_kind == WEIGHTS:
        delta = {k: v.astype(np.float64) - start[k] for k, v in update.items()}
    elif reply_kind == GRADIENT:
        delta = {k: -lr * v.astype(np.float64) for k, v in update.items()}
    else:
        delta = update
    if rule_kind == DELTA:
        return delta
    if rule_kind == GRADIENT:
        return {k: (-v / lr).astype(update[k].dtype) for k, v in delta.items()}
    return {k: (start[k] + v).astype(start[k].dtype) for k, v in delta.items()}


@dataclass
class RunParts:
    """The collaborators a runner is given: the event loop and dispatch, the reply guard, the
    evaluation schedule, checkpoints, the recorder, and the run's seeded generator."""

    name: str
    loop: EventLoop
    dispatcher: Dispatcher
    guard: ReplyGuard
    schedule: EvaluationSchedule
    checkpointer: Checkpointer | None
    recorder: RunRecorder
    rng: np.random.Generator
    reply_kind: str
    time_budget: float = 0.0
    stop_file: str = ""
    step_setting: str = "lr"  # what to lower when the global model diverges
    client_lr: float | None = None  # train_config's lr: turns weights into pseudo-gradients
    weighted_by_key: str = NUM_EXAMPLES
    train_metrics_aggr_fn: MetricsAggregationFn = aggregate_metricrecords
    nodes: NodeWatch | None = None
    federated: FederatedEvaluation | None = None
    #: the strategy this run becomes if the ClientApp runs its own training
    without_the_helper: str | None = None
    _warned_kind: bool = False
    _warned_own_training: bool = False
    _setting: SettingCheck = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._setting = SettingCheck(self.weighted_by_key, self.dispatcher.keys,
                                     min(3, self.num_clients))

    @property
    def num_clients(self) -> int:
        return len(self.dispatcher.node_ids)

    def should_stop(self) -> bool:
        """Whether the run ends now, after the update or round in progress: its clock has
        passed `time_budget` (0: no budget), or its `stop_file` exists (a graceful stop from
        outside: `touch` it; the results are written as for a finished run)."""
        return ((self.time_budget > 0 and self.loop.clock.now >= self.time_budget)
                or bool(self.stop_file and os.path.exists(self.stop_file)))

    def check(self, completion: Completion, reference: Arrays, version: int,
              start: Arrays | None = None):
        """The guard's verdict on a reply; a rejection is recorded. Returns the TrainReply or
        None."""
        self.loop.phases.enter("deserialize")
        if completion.lost:  # its client left: not the client's fault
            self.recorder.rejected(completion, version, completion.failure_reason)
            return None
        sizes = self.dispatcher.partition_sizes
        known = sizes is not None and completion.client < len(sizes)
        verdict = self.guard.check(completion, reference, start,
                                   sizes[completion.client] if known else MAX_EXAMPLES,
                                   self.weighted_by_key, self.step_setting)
        self._setting.observe(completion, verdict)
        if isinstance(verdict, str):
            self.recorder.rejected(completion, version, verdict)
            if completion.client in self.guard.dropped:
                log(WARNING, "client %d dropped after %d faults in a row", completion.client,
                    self.guard.faults[completion.client])
            return None
        return verdict

    def update(self, reply: TrainReply, rule: Rule, start: Arrays | None) -> Arrays:
        """A checked reply as the update `rule` takes (see `rule_update`). The first reply
        that is not what the ClientApp was asked for is logged: the rule then runs on
        pseudo-gradients or deltas derived from weights, as docs/plugin.md states."""
        if (self.without_the_helper and STEPS not in reply.metrics
                and not self._warned_own_training):
            self._warned_own_training = True
            log(WARNING, "%s asked for %s; the ClientApp reports no local-steps, so it runs "
                "its own training (as Flower's quickstart does) and this run is %s of that "
                "training. For %s proper, answer with asyncfl.client.register", self.name,
                ", ".join(f"{k} = {v}" for k, v in self.dispatcher.settings.items()
                          if k in (LOCAL_STEPS, BATCH_SIZE)) or "its local steps",
                self.without_the_helper, self.name)
        if reply.kind != self.reply_kind and not self._warned_kind:
            self._warned_kind = True
            log(WARNING, "%s asked the ClientApp for %s and got %s (a ClientApp that does not "
                "use asyncfl.client): the server derives the %s from the model the client "
                "started from%s", self.name, self.reply_kind, reply.kind, rule.update_kind,
                " and lr, (w_start - w_end) / lr: exact for one plain SGD step, the usual "
                "pseudo-gradient otherwise" if GRADIENT in (reply.kind, rule.update_kind)
                else "")
        return rule_update(reply.arrays, reply.kind, rule.update_kind, start, self.client_lr)

    def weight(self, reply: TrainReply) -> float:
        """A checked reply's weight: its `weighted_by_key` metric (examples, by default)."""
        return float(reply.metrics[self.weighted_by_key])

    def train_metrics(self, replies: list[TrainReply]) -> MetricRecord | None:
        """The replies' metrics aggregated by `train_metrics_aggr_fn` (None, logged, if it
        fails: a user's aggregation never stops training)."""
        if not replies:
            return None
        try:
            if self.train_metrics_aggr_fn is aggregate_metricrecords:  # (Flower's default)
                return weighted_metrics([r.metrics for r in replies], self.weighted_by_key)
            return self.train_metrics_aggr_fn(
                [RecordDict({METRICS: r.metrics}) for r in replies], self.weighted_by_key)
        except Exception as err:  # noqa: BLE001 - a metric function is user code
            log(WARNING, "train_metrics_aggr_fn failed (%s: %s); metrics of this version "
                "skipped", type(err).__name__, err)
            return None

    def evaluation_rng(self) -> np.random.Generator:
        """The generator that samples clients for federated evaluation: its own stream, so
        evaluating never changes which clients train."""
        return np.random.default_rng([self.dispatcher.seed, 7])

    def no_client_left(self, version: int) -> None:
        """Every client was dropped: stop. With no update applied at all nothing can
        succeed, which is an error naming what went wrong; otherwise the run ends early."""
        reasons = ", ".join(f"{reason} ({count})"
                            for reason, count in self.recorder.failures.most_common(3))
        if not self.recorder.applied():
            raise NoClientLeftError(
                f"{self.name}: every client was dropped after {self.guard.max_faults} faulty "
                f"replies in a row and no update was ever applied; replies failed with: "
                f"{reasons}")
        log(WARNING, "no client left to train (%d dropped; %s); stopping at version %d",
            len(self.guard.dropped), reasons, version)

    def joined_clients(self) -> list[int]:
        """Client indices of nodes that connected since the last look (plug-in runs)."""
        if self.nodes is None:
            return []
        new = self.nodes.joined()
        return self.dispatcher.add_nodes(new) if new else []

    def new_model(self, version: int, arrays: Arrays) -> None:
        """A new global model: the guard stops the run here if the server's steps diverged."""
        self.guard.check_model(version, arrays, self.step_setting)

    def checkpoint_due(self, version: int) -> bool:
        """Whether `save` at `version` writes a checkpoint (so a runner builds its state for
        one only then: the idle pool alone is O(N))."""
        return self.checkpointer is not None and self.checkpointer.due(version)

    def save(self, version: int, state: dict[str, Any], rule: Rule, model_state: ModelState,
             extra: dict[str, Any]) -> None:
        """Write a checkpoint if one is due at `version`: the runner's loop `state`, the
        rule's fields, every collaborator's state and the tasks in flight."""
        if not self.checkpoint_due(version):
            return
        self.loop.phases.enter("bookkeeping")
        self.checkpointer.save({
            "strategy": self.name, "version": version, "state": state,
            "rng": self.rng.bit_generator.state, "recorder": self.recorder,
            "next_eval": self.schedule.next_due, "guard": self.guard.snapshot(),
            "rule": {name: getattr(rule, name) for name in rule.state_fields},
            "statistics": model_state.snapshot(), "extra": extra,
            "loop": self.loop.snapshot(),
        })

    def resume(self, rule: Rule, model_state: ModelState) -> dict[str, Any] | None:
        """Take back a checkpoint's state if the run resumes one; return the runner's loop
        state and the extra state it saved, or None."""
        payload = self.checkpointer.resumed(self.name) if self.checkpointer else None
        if payload is None:
            return None
        self.rng.bit_generator.state = payload["rng"]
        self.recorder.restore(payload["recorder"])
        self.schedule.next_due = payload["next_eval"]
        self.guard.restore(payload["guard"])
        for name, value in payload["rule"].items():
            setattr(rule, name, value)
        model_state.restore(payload["statistics"])
        node_ids = self.dispatcher.node_ids
        self.loop.restore(payload["loop"], lambda client: node_ids[client])
        log(INFO, "resumed %s at version %d", self.name, payload["version"])
        return {**payload["state"], "extra": payload["extra"]}

    def finish(self, algorithm: TrafficCounters, versions_kept_peak: int = 0) -> None:
        """Close the run's books: the totals go into the recorder (and, if clients come and
        go, their online windows up to the end, as the `availability` table)."""
        self.loop.phases.enter("bookkeeping")
        if self.loop.availability is not None:
            self.recorder.tables["availability"] = online_windows(
                self.loop.availability, self.num_clients, self.loop.virtual_clock.now)
        self.recorder.totals = RunTotals(
            virtual_time=self.loop.virtual_clock.now, traffic=self.loop.traffic,
            algorithm=algorithm, ignored_replies=self.loop.ignored_replies,
            dropped=sorted(self.guard.dropped), versions_kept_peak=versions_kept_peak)
