"""When the newest global model is evaluated: every `every` versions and the last one, or, with
an `interval`, at every multiple of it on the run's clock (an evaluator beside training); on
the server (`evaluate_fn`) and on a sample of the clients (Flower's federated evaluation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from asyncfl.engine import EventLoop
from asyncfl.engine.recorder import RunRecorder
from asyncfl.engine.utils import metric_problem, number_problem
from asyncfl.protocol import ARRAYS, CONFIG, EVALUATE, NUM_EXAMPLES, SERVER_ROUND, WEIGHT_KEY

if TYPE_CHECKING:
    from asyncfl.engine.dispatch import Dispatcher

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
#: Flower's metric aggregation: (reply contents, weighting metric name) -> aggregate
MetricsAggregationFn = Callable[[list[RecordDict], str], MetricRecord]
#: what Flower's ClientApp says when it has no handler for a message type
NO_HANDLER = "function registered with name"


class FederatedEvaluation:
    """Flower's federated evaluation: the newest model goes to a sample of max(int(
    `fraction` x available), `min_nodes`) (at most all) of the clients that have no task in
    flight, whose ClientApps evaluate it (`@app.evaluate`); their metrics are aggregated by
    `aggregate` weighted by `weighted_by_key`. A sync run evaluates after its rounds; an async
    run on idle clients, at most M of them with the one whose update made the version among
    them (no node ever holds two messages, and evaluating costs no more messages than
    training). It waits for the replies (the Grid's `send_and_receive`) and takes no virtual
    time: it measures the run, it is not part of it. A ClientApp without an evaluate handler
    turns it off for the rest of the run, with a warning."""

    def __init__(self, fraction: float = 1.0, min_nodes: int = 2,
                 weighted_by_key: str = NUM_EXAMPLES,
                 aggregate: MetricsAggregationFn | None = None,
                 arrayrecord_key: str = ARRAYS, configrecord_key: str = CONFIG) -> None:
        self.fraction = fraction
        self.min_nodes = min_nodes if fraction > 0 else 0
        self.weighted_by_key = weighted_by_key
        self.aggregate = aggregate or aggregate_metricrecords
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.enabled = fraction > 0
        self.skipped = 0
        self._dispatcher: Dispatcher | None = None
        self._config = ConfigRecord()

    def bind(self, dispatcher: Dispatcher, config: ConfigRecord | None) -> None:
        """The run's nodes and event loop, and the `evaluate_config` every instruction
        carries."""
        self._dispatcher = dispatcher
        self._config = config if config is not None else ConfigRecord()
        self.enabled = self.fraction > 0

    def instructions(self, version: int, arrays: ArrayRecord, config: ConfigRecord,
                     node_ids: list[int], rng: np.random.Generator | None = None
                     ) -> list[Message]:
        """Evaluate messages for a sample of `node_ids` (Flower's `configure_evaluate`);
        `server-round` is the version evaluated."""
        if self.fraction <= 0 or not node_ids:
            return []
        size = min(len(node_ids), max(int(self.fraction * len(node_ids)), self.min_nodes))
        rng = rng if rng is not None else np.random.default_rng()
        # sample positions, not the ids: numpy would turn uint64 ids above 2**63 into floats
        chosen = sorted(node_ids[int(i)] for i in rng.choice(len(node_ids), size=size,
                                                              replace=False))
        config = ConfigRecord({**dict(config), SERVER_ROUND: version})
        if self.weighted_by_key != NUM_EXAMPLES:  # the helper reports examples under it
            config[WEIGHT_KEY] = self.weighted_by_key
        return [Message(RecordDict({self.arrayrecord_key: arrays,
                                    self.configrecord_key: config}),
                        dst_node_id=node, message_type=EVALUATE, group_id=str(version))
                for node in chosen]

    def aggregate_replies(self, version: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The valid replies' metrics aggregated (Flower's `aggregate_evaluate`); replies
        without one MetricRecord holding a positive `weighted_by_key`, or with a metric that
        is not a finite number (or list of them), are skipped and counted."""
        valid = []
        for reply in replies:
            reason = self._invalid(reply)
            if reason:
                self.skipped += 1
                log(WARNING, "skipped evaluate reply of node %d at version %d: %s",
                    reply.metadata.src_node_id, version, reason)
                if NO_HANDLER in reason and self.enabled:
                    self.enabled = False
                    log(WARNING, "the ClientApp has no evaluate function: federated "
                        "evaluation is off for the rest of the run (add @app.evaluate(), "
                        "or pass fraction_evaluate=0.0)")
                continue
            valid.append(reply.content)
        if not valid:
            return None
        try:
            return self.aggregate(valid, self.weighted_by_key)
        except Exception as err:  # noqa: BLE001 - a metric function is user code
            log(WARNING, "evaluate_metrics_aggr_fn failed (%s: %s); version %d skipped",
                type(err).__name__, err, version)
            return None

    def _invalid(self, reply: Message) -> str:
        if reply.has_error():
            return f"error reply: {reply.error.reason}"
        metrics = list(reply.content.metric_records.values())
        if len(metrics) != 1:
            return f"expected one MetricRecord, found {len(metrics)}"
        weight = metrics[0].get(self.weighted_by_key)
        if number_problem(weight, low=math.ulp(0.0)):
            return f"bad {self.weighted_by_key}: {weight!r}"
        return metric_problem(metrics[0])  # NaN or Inf: never averaged in

    def run(self, version: int, arrays: ArrayRecord, clients: list[int],
            rng: np.random.Generator) -> MetricRecord | None:
        """Evaluate the model at `version` on a sample of `clients` (indices of clients with
        nothing in flight) and aggregate the replies."""
        dispatcher = self._dispatcher
        if not self.enabled or dispatcher is None:
            return None
        loop = dispatcher.loop
        node_ids = [dispatcher.node_ids[c] for c in clients
                    if not loop.busy(dispatcher.node_ids[c])]
        messages = self.instructions(version, arrays, self._config, node_ids, rng)
        replies = loop.grid.send_and_receive(messages, timeout=loop.reply_timeout())
        return self.aggregate_replies(version, replies)


class EvaluationSchedule:
    """Evaluates with the ServerApp's `evaluate_fn` on a schedule; results go to the Flower
    `Result` and the recorder (evals.csv)."""

    def __init__(self, every: int = 1, interval: float = 0.0) -> None:
        if every < 1 or interval < 0:
            raise ValueError(f"evaluation every must be >= 1 and interval >= 0, got {every}, "
                             f"{interval}")
        self.every = every
        self.interval = interval
        self.next_due = interval
        self._fn: EvaluateFn | None = None

    def bind(self, evaluate_fn: EvaluateFn | None, loop: EventLoop, recorder: RunRecorder,
             result: Result, federated: FederatedEvaluation | None = None,
             idle: Callable[[], list[int]] | None = None,
             rng: np.random.Generator | None = None) -> None:
        """Attach the run's evaluation function, the federated evaluation with the clients it
        may use now (`idle`) and the generator that samples them, and where results go."""
        self._fn, self._loop, self._recorder, self._result = evaluate_fn, loop, recorder, result
        self._federated = federated if federated is not None and idle is not None else None
        self._idle = idle
        self._rng = rng if rng is not None else np.random.default_rng(0)

    def evaluate(self, version: int, arrays: ArrayRecord, at: float | None = None) -> None:
        """Evaluate a model now; `at` is the time on the run's clock it stands for (a
        federated evaluation happens only now: `at` is None)."""
        self._loop.phases.enter("evaluate")
        metrics = self._fn(version, arrays) if self._fn is not None else None
        if metrics is not None:
            self._result.evaluate_metrics_serverapp[version] = metrics
        if at is None and self._federated is not None and version > 0:
            clients = self._federated.run(version, arrays, self._idle(), self._rng)
            if clients is not None:
                self._result.evaluate_metrics_clientapp[version] = clients
                metrics = MetricRecord({**(dict(metrics) if metrics is not None else {}),
                                        **{f"clients-{k}": v for k, v in clients.items()}})
        if metrics is None:
            return
        virtual, wall = self._loop.virtual_clock.now, self._loop.wall_clock.now
        if at is not None:
            virtual, wall = (at, wall) if self._loop.virtual else (virtual, at)
        self._recorder.evaluated(version, virtual, wall, metrics)

    def new_version(self, version: int, arrays: ArrayRecord, last: bool) -> None:
        """Evaluate a new version if it is due: every `every` versions and the last one;
        with an interval, only the last (`until` does the rest)."""
        if (version % self.every == 0 and self.interval <= 0) or last:
            self.evaluate(version, arrays)

    def until(self, version: int, arrays: ArrayRecord, now: float,
              inclusive: bool = False) -> None:
        """With an interval: evaluate the model in force at every multiple of it up to `now`
        (before an update landing at `now` takes effect, unless `inclusive`)."""
        if self.interval <= 0:
            return
        while self.next_due < now or (inclusive and self.next_due <= now):
            self.evaluate(version, arrays, at=self.next_due)
            self.next_due += self.interval
