"""The Flower face of asyncfl's strategies: Flower's `Strategy` API on the outside; inside,
`start` puts the strategy's rule and a runner (sync rounds or the async loop) together with
their collaborators."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    log_strategy_start_info,
)

from asyncfl.engine import (
    Clock,
    DelayModel,
    EventLoop,
    PhaseTimer,
    VirtualClock,
    WallClock,
    arguments,
    zero_delays,
)
from asyncfl.engine.async_runner import AsyncRule, AsyncRunner, clients_in_flight
from asyncfl.engine.availability import Availability
from asyncfl.engine.checkpoint import Checkpointer
from asyncfl.engine.dispatch import Dispatcher, WholeTasks
from asyncfl.engine.evaluation import (
    EvaluateFn,
    EvaluationSchedule,
    FederatedEvaluation,
    MetricsAggregationFn,
)
from asyncfl.engine.guard import DEFAULT_MAX_FAULTS, ReplyGuard
from asyncfl.engine.nodes import NodeWatch, wait_for_nodes
from asyncfl.engine.recorder import RunRecorder
from asyncfl.engine.runner import Rule, RunParts
from asyncfl.engine.sync_runner import StepPlan, SyncRule, SyncRunner
from asyncfl.protocol import ARRAYS, CONFIG, LR, NUM_EXAMPLES, RETURN, WEIGHT_KEY, WEIGHTS


class AsyncflStrategy(Strategy):
    """What every asyncfl strategy takes besides its algorithm's own settings.

    Plug-in use: construct it like Flower's FedAvg and call `start(grid, initial_arrays,
    num_rounds, train_config=ConfigRecord({"lr": ...}), ...)`. Flower's FedAvg arguments keep
    Flower's meaning and defaults: `fraction_evaluate` and `min_evaluate_nodes` (federated
    evaluation of the newest model on the ClientApps' own `@app.evaluate`), `min_available_nodes`
    (`start` waits for that many nodes, as Flower's sampling does), `weighted_by_key` (the reply
    metric that weights updates and metric averages), `arrayrecord_key` and `configrecord_key`
    (the record names of an instruction), `train_metrics_aggr_fn` and
    `evaluate_metrics_aggr_fn` (default: every numeric metric averaged weighted by
    `weighted_by_key`, Flower's `aggregate_metricrecords`).

    Without a `clock` the wall clock is used and replies are applied in arrival order; pass
    `VirtualClock()` and a `DelayModel` to simulate heterogeneous speeds. `node_ids` fixes the
    nodes, in client order; without it the Grid's nodes are used, sorted, and a node that
    connects during the run joins it (sync: sampled from the next round on; async: sent a
    task like any idle client). `partition_sizes` (examples per client, where known) bound
    each reply's example count and fix epoch-based tasks' virtual duration at dispatch.
    `availability` (virtual clock only; `engine.availability`) says when each client is
    online: tasks go only to online clients, and one whose client goes offline first is lost.
    `guard`, `evaluation` and `checkpoints` are the reply guard, the evaluation schedule and
    the checkpointer (defaults: a client is dropped after `DEFAULT_MAX_FAULTS` faulty replies
    in a row, every version evaluated, no checkpoints). `time_budget` (seconds on the run's
    clock) and `stop_file` (a path; once a file exists there) end a run early, after the
    update or round in progress. After `start`, `recorder` holds what
    the run did (events, evaluations, skips, totals).
    """

    #: what the ClientApp is asked to return: "weights", "delta" or "gradient" (a reply that
    #: holds something else is converted, see `runner.rule_update`)
    reply_kind = WEIGHTS
    #: train settings the algorithm itself fixes (FedSGD: one step over the whole partition)
    fixed_train_config: dict = {}
    #: stream of the run seed that drives the strategy's sampling
    rng_stream = 0
    #: whether the guard's median rule for outlier updates applies (`ReplyGuard`): not to a
    #: rule whose replies are data values rather than training updates (the divergence
    #: limit still does)
    median_outliers = True
    #: the setting that sizes the server's step: named when the global model diverges
    step_setting = "lr (the clients' learning rate)"
    #: the strategy this one becomes with a ClientApp that runs its own training (reports no
    #: `local-steps`): said once per run (FedSGD, LSGD, SSGD -> FedAvg)
    without_the_helper: str | None = None

    def __init__(
        self,
        *,
        fraction_evaluate: float = 1.0,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = NUM_EXAMPLES,
        arrayrecord_key: str = ARRAYS,
        configrecord_key: str = CONFIG,
        train_metrics_aggr_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregationFn | None = None,
        clock: Clock | None = None,
        delays: DelayModel | None = None,
        availability: Availability | None = None,
        seed: int = 0,
        node_ids: Sequence[int] | None = None,
        partition_sizes: Sequence[int] | None = None,
        time_budget: float = 0.0,
        stop_file: str = "",
        guard: ReplyGuard | None = None,
        evaluation: EvaluationSchedule | None = None,
        checkpoints: Checkpointer | None = None,
        phases: PhaseTimer | None = None,
        poll_interval: float = 0.01,
    ) -> None:
        fraction_evaluate = arguments.number("fraction_evaluate", fraction_evaluate,
                                             "a number in [0, 1]", lambda x: 0 <= x <= 1)
        min_evaluate_nodes = arguments.integer("min_evaluate_nodes", min_evaluate_nodes)
        min_available_nodes = arguments.integer("min_available_nodes", min_available_nodes)
        arguments.integer("seed", seed)
        time_budget = arguments.non_negative("time_budget", time_budget)
        poll_interval = arguments.positive("poll_interval", poll_interval)
        self.federated_evaluation = FederatedEvaluation(
            fraction_evaluate, min_evaluate_nodes, weighted_by_key, evaluate_metrics_aggr_fn,
            arrayrecord_key, configrecord_key)
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or aggregate_metricrecords
        self.clock = clock if clock is not None else WallClock()
        if availability is not None and not isinstance(self.clock, VirtualClock):
            raise ValueError("availability needs clock=VirtualClock(): who is online is a "
                             "matter of simulated time")
        self.delays = delays
        self.availability = availability
        self.seed = seed
        self.node_ids = list(node_ids) if node_ids is not None else None
        self.partition_sizes = partition_sizes
        self.time_budget = time_budget
        self.stop_file = stop_file
        self.guard = guard if guard is not None else ReplyGuard(DEFAULT_MAX_FAULTS)
        self.evaluation = evaluation if evaluation is not None else EvaluationSchedule()
        self.checkpoints = checkpoints
        self.phases = phases if phases is not None else PhaseTimer()
        self.poll_interval = poll_interval
        self.recorder = RunRecorder(self.clock.kind)

    @property
    def fraction_evaluate(self) -> float:
        return self.federated_evaluation.fraction

    @property
    def min_evaluate_nodes(self) -> int:
        return self.federated_evaluation.min_nodes

    @property
    def evaluate_metrics_aggr_fn(self) -> MetricsAggregationFn:
        return self.federated_evaluation.aggregate

    def run_parts(self, grid: Grid, timeout: float | None, train_config: ConfigRecord | None,
                  evaluate_config: ConfigRecord | None = None) -> RunParts:
        """The collaborators of one run on `grid`."""
        fixed = self.node_ids is not None
        node_ids = (self.node_ids if fixed
                    else wait_for_nodes(grid, 0, self.min_available_nodes,
                                        setting="min_available_nodes"))
        if not node_ids:
            raise RuntimeError("the Grid has no nodes to train on")
        delays = self.delays if self.delays is not None else zero_delays(len(node_ids))
        if len(delays.step_times) < len(node_ids):
            raise ValueError(f"the delay model covers {len(delays.step_times)} clients, "
                             f"but there are {len(node_ids)} nodes")
        clock = type(self.clock)()  # each run's time starts at 0
        loop = EventLoop(grid, clock, delays, self.poll_interval, timeout,
                         phases=self.phases, availability=self.availability)
        settings = {**(dict(train_config) if train_config is not None else {}),
                    **self.fixed_train_config, RETURN: self.reply_kind}
        if self.weighted_by_key != NUM_EXAMPLES:  # the helper reports examples under it
            settings[WEIGHT_KEY] = self.weighted_by_key
        client_lr = float(settings[LR]) if LR in settings else None
        dispatcher = Dispatcher(loop, node_ids, self.seed, settings, self.partition_sizes,
                                self.arrayrecord_key, self.configrecord_key)
        self.federated_evaluation.bind(dispatcher, evaluate_config)
        return RunParts(
            name=type(self).__name__, loop=loop, without_the_helper=self.without_the_helper,
            dispatcher=dispatcher,
            guard=self.guard.for_run(self.median_outliers),
            schedule=copy.deepcopy(self.evaluation),
            checkpointer=self.checkpoints,
            recorder=self.recorder, rng=np.random.default_rng([self.seed, self.rng_stream]),
            reply_kind=self.reply_kind, time_budget=self.time_budget, stop_file=self.stop_file,
            step_setting=self.step_setting, client_lr=client_lr,
            weighted_by_key=self.weighted_by_key,
            train_metrics_aggr_fn=self.train_metrics_aggr_fn,
            nodes=NodeWatch(grid, node_ids, follow=not fixed),
            federated=self.federated_evaluation)

    def new_rule(self, parts: RunParts | None = None) -> Rule:
        """The algorithm's rule with fresh state: once at construction (without `parts`: it
        checks the arguments), and anew at each `start`, where `parts` tells what the
        defaults depend on (clients in flight, the clients' lr)."""
        raise NotImplementedError

    def runner(self, parts: RunParts) -> SyncRunner | AsyncRunner:
        """The loop that drives this strategy's rule (sync rounds or the async loop)."""
        raise NotImplementedError

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run `num_rounds` rounds (sync) or until `num_rounds` global versions exist (async);
        Flower's signature and result. `timeout`: wall seconds without any reply before the
        oldest task in flight is given up; None (the default) follows the tasks' expected
        time (`EventLoop.reply_timeout`), so a silent node never stalls a run for hours.
        `evaluate_config` goes with every federated evaluation (see `fraction_evaluate`)."""
        began = time.monotonic()
        self.recorder = RunRecorder(self.clock.kind)  # per-run state: a second start is fresh
        parts = self.run_parts(grid, timeout, train_config, evaluate_config)
        self.rule = self.new_rule(parts)
        runner = self.runner(parts)
        unit = "rounds" if isinstance(runner, SyncRunner) else "versions"
        log(INFO, "Starting %s for %d %s", type(self).__name__, num_rounds, unit)
        log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        self.summary()
        result = runner.run(initial_arrays, num_rounds, evaluate_fn)
        self.recorder.log_summary(type(self).__name__, unit, time.monotonic() - began, result)
        return result

    def summary(self) -> None:
        """Log the strategy and its rule's settings (Flower calls this at the start)."""
        settings = {k: v for k, v in vars(self.rule).items() if isinstance(v, (int, float))}
        log(INFO, "\t%s (%s clock): %s", type(self).__name__, self.clock.kind,
            ", ".join(f"{k}={v}" for k, v in settings.items()) or "no settings")
        if self.fraction_evaluate > 0:
            log(INFO, "\tfederated evaluation: fraction_evaluate=%g, min_evaluate_nodes=%d",
                self.fraction_evaluate, self.min_evaluate_nodes)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """asyncfl's runners dispatch from `start` (see the runner of each strategy)."""
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """asyncfl's runners apply updates from `start` through the strategy's rule."""
        return None, None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Flower's evaluate instructions: the model to a sample of `fraction_evaluate` of the
        Grid's nodes (at least `min_evaluate_nodes`). asyncfl's runners send them themselves,
        to idle nodes only (see `FederatedEvaluation`)."""
        return self.federated_evaluation.instructions(
            server_round, arrays, config, list(grid.get_node_ids()))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The evaluate replies' metrics, aggregated by `evaluate_metrics_aggr_fn`."""
        return self.federated_evaluation.aggregate_replies(server_round, replies)


class SyncStrategy(AsyncflStrategy):
    """A round-synchronous strategy: its `rule` combines each round's checked updates.
    Per round max(int(`fraction_train` x N), `min_train_nodes`) of the N clients are sampled
    (at most N; Flower's FedAvg sizes its sample so, but draws it with the run's seed);
    `round_timeout` > 0 ends a round that many seconds after it was sent (see `SyncRunner`)."""

    rng_stream = 3
    rule: SyncRule

    def __init__(self, fraction_train: float = 1.0, round_timeout: float = 0.0, *,
                 min_train_nodes: int = 2, **options) -> None:
        super().__init__(**options)
        fraction_train = arguments.number("fraction_train", fraction_train,
                                          "a number in (0, 1]", lambda x: 0 < x <= 1)
        round_timeout = arguments.non_negative("round_timeout", round_timeout)
        min_train_nodes = arguments.integer("min_train_nodes", min_train_nodes, 1)
        self.fraction_train = fraction_train
        self.round_timeout = round_timeout
        self.min_train_nodes = min_train_nodes

    def step_plan(self, parts: RunParts) -> StepPlan | None:
        """A hook that chooses each client's local steps per round (ESync), made per run."""
        return None

    def runner(self, parts: RunParts) -> SyncRunner:
        return SyncRunner(self.rule, parts, self.fraction_train, self.round_timeout,
                          self.step_plan(parts), self.min_train_nodes)


class AsyncStrategy(AsyncflStrategy):
    """An asynchronous strategy: its `rule` folds in one update at a time while `concurrency`
    (M; 0 = every client) clients train; `num_rounds` counts global model versions. With a
    wall clock a failed client rests `retry_backoff` seconds, doubling (see `AsyncRunner`).
    `staleness_cutoff` R > 0 discards every update R or more versions old (Ringmaster ASGD,
    Maranjyan et al., ICML 2025) and sends its client the newest model; 0: none."""

    rng_stream = 5
    rule: AsyncRule

    def __init__(self, concurrency: int = 0, retry_backoff: float = 2.0,
                 staleness_cutoff: int = 0, **options) -> None:
        super().__init__(**options)
        concurrency = arguments.integer("concurrency (0: every client)", concurrency)
        retry_backoff = arguments.non_negative("retry_backoff", retry_backoff)
        self.concurrency = concurrency
        self.retry_backoff = retry_backoff
        self.staleness_cutoff = arguments.integer("staleness_cutoff (0: none)",
                                                  staleness_cutoff)

    def in_flight(self, parts: RunParts) -> int:
        """M: the clients in flight at once."""
        return clients_in_flight(self.concurrency, parts.num_clients)

    def tasks(self, parts: RunParts) -> WholeTasks:
        """How tasks are sent: one message each (APSB sends segments)."""
        return WholeTasks(parts.dispatcher)

    def runner(self, parts: RunParts) -> AsyncRunner:
        return AsyncRunner(self.rule, parts, self.concurrency, self.retry_backoff,
                           self.tasks(parts), self.staleness_cutoff)

