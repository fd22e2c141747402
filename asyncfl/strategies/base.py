"""What every asyncfl strategy shares: clients, clocks, the event loop, evaluation, the run log;
and the synchronous round loop."""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from asyncfl.strategies.checkpoint import CheckpointError, save_checkpoint
from asyncfl.strategies.utils import (
    EVENT_COLUMNS,
    MAX_EXAMPLES,
    MODEL_VERSION,
    NUM_EXAMPLES,
    TRAIN_LOSS,
    RunLog,
    arrays_to_record,
    check_reply,
    parse_reply,
    record_to_arrays,
    sample_clients,
    task_seed,
    train_instruction,
    update_norm,
)
from asyncfl.timing import (
    Clock,
    Completion,
    DelayModel,
    EventLoop,
    PhaseTimer,
    TrafficCounters,
    WallClock,
    array_bytes,
    zero_delays,
)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

PROGRESS_SECONDS = 5.0


class AsyncflStrategy(Strategy):
    """Common ground of asyncfl's strategies: clients, clock, event loop, run log, evaluation.

    Plug-in use: construct it like Flower's FedAvg and call `start(grid, initial_arrays,
    num_rounds)`. Without a `clock` the wall clock is used and replies are applied in arrival
    order; pass `VirtualClock()` and a `DelayModel` to simulate heterogeneous speeds.
    `node_ids` lists the nodes in client order (default: the Grid's nodes, sorted);
    `partition_sizes` (examples per client, where known) lets epoch-based tasks have their
    virtual duration fixed at dispatch.
    """

    #: what the ClientApp returns: "weights", "delta" or "gradient"
    reply_kind = "weights"
    #: train settings the algorithm itself fixes (FedSGD: one step over the whole partition)
    fixed_train_config: dict = {}
    #: attributes holding a subclass's own state between updates (saved in checkpoints)
    checkpoint_fields: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        delays: DelayModel | None = None,
        seed: int = 0,
        eval_every: int = 1,
        node_ids: Sequence[int] | None = None,
        partition_sizes: Sequence[int] | None = None,
        poll_interval: float = 0.01,
        time_budget: float = 0.0,
        eval_interval: float = 0.0,
        max_faults: int = 0,
        norm_bound: float = 0.0,
        norm_action: str = "clip",
        checkpoint_every: int = 0,
        checkpoint_path: str | Path | None = None,
        resume: dict | None = None,
    ) -> None:
        self.clock = clock if clock is not None else WallClock()
        self.delays = delays
        self.seed = seed
        self.eval_every = eval_every
        self.node_ids = list(node_ids) if node_ids is not None else None
        self.partition_sizes = list(partition_sizes) if partition_sizes is not None else None
        self.poll_interval = poll_interval
        self.time_budget = time_budget
        self.eval_interval = eval_interval
        self._next_eval = eval_interval
        if max_faults < 0 or norm_bound < 0 or norm_action not in ("clip", "reject"):
            raise ValueError("max_faults and norm_bound must be >= 0, norm_action clip|reject")
        self.max_faults = max_faults
        self.norm_bound = norm_bound
        self.norm_action = norm_action
        self._faults: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.resume = resume
        self.checkpoint_meta: dict = {}  # what the caller wants saved alongside (its config)
        self.phases = PhaseTimer()
        self.run_log = RunLog()
        self.loop: EventLoop | None = None
        self._last_progress = 0.0

    @property
    def num_clients(self) -> int:
        return len(self.node_ids or [])

    def _prepare(self, grid: Grid, timeout: float | None) -> EventLoop:
        if self.node_ids is None:
            self.node_ids = sorted(grid.get_node_ids())
        if not self.node_ids:
            raise RuntimeError("the Grid has no nodes to train on")
        if self.delays is None:
            self.delays = zero_delays(self.num_clients)
        if len(self.delays.step_times) < self.num_clients:
            raise ValueError(
                f"the delay model covers {len(self.delays.step_times)} clients, "
                f"but there are {self.num_clients} nodes"
            )
        self._client_of_node = {node: i for i, node in enumerate(self.node_ids)}
        self.loop = EventLoop(grid, self.clock, self.delays, self.poll_interval, timeout)
        self._last_progress = time.monotonic()
        return self.loop

    def checkpoint(self, version: int, state: dict) -> None:
        """Every `checkpoint_every` versions, write the whole run state: the strategy's own,
        the caller's loop `state`, and the event loop with every task in flight."""
        if not (self.checkpoint_every and self.checkpoint_path) or version % self.checkpoint_every:
            return
        assert self.loop is not None
        payload = {
            "strategy": type(self).__name__, "version": version, "state": state,
            "rng": self._rng.bit_generator.state, "run_log": self.run_log,
            "next_eval": self._next_eval, "faults": self._faults, "dropped": self.dropped,
            "fields": {name: getattr(self, name) for name in self.checkpoint_fields},
            "loop": self.loop.snapshot(), "meta": self.checkpoint_meta,
        }
        save_checkpoint(self.checkpoint_path, payload)

    def restore(self) -> dict:
        """Take back the state of `resume` (a checkpoint's payload); return the loop state."""
        assert self.resume is not None and self.loop is not None
        payload = self.resume
        if payload["strategy"] != type(self).__name__:
            raise CheckpointError(f"the checkpoint is of {payload['strategy']}, not "
                                  f"{type(self).__name__}")
        self._rng.bit_generator.state = payload["rng"]
        self.run_log = payload["run_log"]
        self._next_eval = payload["next_eval"]
        self._faults, self.dropped = payload["faults"], payload["dropped"]
        for name, value in payload["fields"].items():
            setattr(self, name, value)
        assert self.node_ids is not None
        self.loop.restore(payload["loop"], lambda client: self.node_ids[client])
        log(INFO, "resumed %s at version %d", type(self).__name__, payload["version"])
        return payload["state"]

    def out_of_time(self) -> bool:
        """Whether the run's clock has passed `time_budget` (0: no budget)."""
        return self.time_budget > 0 and self.clock.now >= self.time_budget

    def train_settings(self, train_config: ConfigRecord | None) -> dict:
        """The run's train config with what this algorithm fixes and what it wants back."""
        base = dict(train_config) if train_config is not None else {}
        return {**base, **self.fixed_train_config, "return": self.reply_kind}

    def expected_steps(self, client: int, config: dict) -> int | None:
        """Local steps a task will run, if the server can tell before the reply."""
        if int(config.get("local-steps", 0)) > 0:
            return int(config["local-steps"])
        if self.partition_sizes is None or "local-epochs" not in config:
            return None
        n = self.partition_sizes[client]
        batch = int(config.get("batch-size", 0)) or n
        return int(config["local-epochs"]) * math.ceil(n / batch)

    def instruction(
        self, arrays: ArrayRecord | None, config: dict, version: int, client: int,
        model_bytes: int, message_type: str = "train", extra: dict | None = None,
    ) -> Message:
        """A train message for one client: the run's config, the model version, a shuffling
        seed, and in wall-clock mode the delay the ClientApp must really sleep (its step time,
        plus the communication time of the model down and a model-sized reply up)."""
        config = {**config, MODEL_VERSION: version,
                  "task-seed": task_seed(self.seed, version, client), **(extra or {})}
        if self.clock.kind == "wall":
            assert self.delays is not None
            config["step-delay"] = float(self.delays.step_times[client])
            config["comm-delay"] = float(self.delays.comm_time(2 * model_bytes))
        assert self.node_ids is not None
        return train_instruction(arrays, ConfigRecord(config), self.node_ids[client],
                                 str(version), message_type)

    def dispatch(
        self, arrays: ArrayRecord, config: dict, version: int, clients: Iterable[int]
    ) -> int:
        """Send the model at `version` to each client (the tag remembers the version);
        return how many were sent."""
        assert self.loop is not None
        size = array_bytes(arrays)
        return len(self.loop.send(
            ((self.instruction(arrays, config, version, c, size), c,
              self.expected_steps(c, config), version) for c in clients),
            model_bytes=size,
        ))

    def accept(
        self, completion: Completion, reference: dict[str, np.ndarray], version: int,
        base: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], MetricRecord] | None:
        """The reply's arrays and metrics if it may touch the global model; otherwise None,
        and the reply is logged, counted, and written to events.csv with its reason. A client
        that faults `max_faults` times in a row is dropped. With `norm_bound`, an update
        (the delta from the model the client started from, `base` or `reference`) larger
        than the bound is clipped to it or rejected."""
        reason = completion.failure_reason
        if not reason:
            try:
                arrays, metrics = parse_reply(completion.reply)
                limit = (self.partition_sizes[completion.client] if self.partition_sizes
                         else MAX_EXAMPLES)
                reason = check_reply(arrays, metrics, reference, max_examples=limit,
                                     version_sent=int(completion.tag))
            except ValueError as err:
                reason = f"malformed reply: {err}"
        if not reason and self.norm_bound > 0:
            arrays, reason = self._bound_norm(arrays, base if base is not None else reference)
        if reason:
            self.run_log.skip(completion.client, version, reason)
            self._reject(completion, version, reason)
            return None
        self._faults[completion.client] = 0
        return arrays, metrics

    def _bound_norm(self, arrays: dict[str, np.ndarray], start: dict[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], str]:
        is_delta = self.reply_kind != "weights"
        delta = arrays if is_delta else {k: v.astype(np.float64) - start[k]
                                         for k, v in arrays.items()}
        norm = update_norm(delta)
        if norm <= self.norm_bound:
            return arrays, ""
        if self.norm_action == "reject":
            return arrays, f"update too large: norm {norm:.4g} > bound {self.norm_bound:g}"
        scale = self.norm_bound / norm
        clipped = {k: (v * scale if np.issubdtype(v.dtype, np.floating) else v)
                   for k, v in delta.items()}
        if not is_delta:
            clipped = {k: start[k] + v for k, v in clipped.items()}
        return {k: np.asarray(v).astype(arrays[k].dtype) for k, v in clipped.items()}, ""

    def _reject(self, completion: Completion, version: int, reason: str) -> None:
        """An events.csv row for a rejected reply; drop the client after too many faults."""
        client = completion.client
        row = dict.fromkeys(EVENT_COLUMNS)
        row.update(version_apply=version, version_dispatch=completion.tag, client=client,
                   virtual_time=completion.virtual_time, wall_time=completion.wall_time,
                   dispatch_time=self.dispatch_time(completion), rejected=reason)
        self.run_log.events.append(row)
        self._faults[client] = self._faults.get(client, 0) + 1
        if self.max_faults and self._faults[client] >= self.max_faults:
            self.dropped.add(client)
            log(WARNING, "client %d dropped after %d faults in a row", client,
                self._faults[client])

    def evaluate(self, evaluate_fn: EvaluateFn | None, version: int, arrays: ArrayRecord,
                 result: Result, at: float | None = None) -> None:
        """Evaluate the newest model, log one line, and keep the row for evals.csv; `at` is
        the time on the run's clock it stands for (default: now)."""
        if evaluate_fn is None:
            return
        metrics = evaluate_fn(version, arrays)
        if metrics is None:
            return
        result.evaluate_metrics_serverapp[version] = metrics
        assert self.loop is not None
        virtual, wall = self.loop.virtual_clock.now, self.loop.wall_clock.now
        if at is not None:
            virtual, wall = (at, wall) if self.clock.kind == "virtual" else (virtual, at)
        row = {"version": version, "virtual_time": virtual, "wall_time": wall}
        row.update(metrics)
        self.run_log.evals.append(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                         if isinstance(v, float) and "class" not in k)
        log(INFO, "version %d | virtual %.2f s | wall %.2f s | %s", version, virtual, wall, shown)

    def version_evaluated(self, version: int, last: bool) -> bool:
        """Whether to evaluate a new version: every eval-every versions and the last one;
        with an evaluation interval, only the last (the interval evaluator does the rest)."""
        if self.eval_interval > 0:
            return last
        return version % self.eval_every == 0 or last

    def evaluate_due(self, evaluate_fn: EvaluateFn | None, version: int, arrays: ArrayRecord,
                     result: Result, until: float, inclusive: bool = False) -> None:
        """The evaluator beside training: evaluate the model in force at every multiple of
        `eval_interval` up to `until` on the run's clock (before an update landing at `until`
        takes effect, unless `inclusive`)."""
        if self.eval_interval <= 0:
            return
        while self._next_eval < until or (inclusive and self._next_eval <= until):
            self.evaluate(evaluate_fn, version, arrays, result, at=self._next_eval)
            self._next_eval += self.eval_interval

    def progress(self, version: int, total: int) -> None:
        """A progress line every few seconds on long runs."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress = now
        assert self.loop is not None
        newest = self.run_log.evals[-1] if self.run_log.evals else {}
        shown = " ".join(f"{k}={newest[k]:.4f}" for k in ("accuracy", "loss") if k in newest)
        log(INFO, "progress: version %d/%d | virtual %.2f s | %d updates | newest eval: %s",
            version, total, self.loop.virtual_clock.now, len(self.run_log.events),
            shown or "none yet")

    def communication(self) -> TrafficCounters:
        """Messages and bytes the algorithm moves, each way. For most strategies these are the
        Grid's messages; APSB counts its broadcasts (one model transfer per receiving worker)
        instead of the continuation messages its virtual-time simulation needs."""
        assert self.loop is not None
        return self.loop.traffic

    def dispatch_time(self, completion: Completion) -> float:
        """When the task was sent, on the run's clock."""
        dispatch = completion.dispatch
        return dispatch.sent_virtual if self.clock.kind == "virtual" else dispatch.sent_wall

    def record_update(self, completion: Completion, metrics: MetricRecord,
                      version_at_arrival: int, version_after: int) -> None:
        """One events.csv row. Staleness = server version when the update arrived minus the
        version the client started from. `dispatch_time` and `duration` are on the run's
        clock: computed by the delay model in virtual time, measured with a wall clock."""
        version_dispatch = int(completion.tag)
        sent = self.dispatch_time(completion)
        finished = completion.virtual_time if self.clock.kind == "virtual" else completion.wall_time
        row = dict.fromkeys(EVENT_COLUMNS)
        row.update(
            rejected="",
            version_apply=version_after,
            version_dispatch=version_dispatch,
            staleness=version_at_arrival - version_dispatch,
            client=completion.client,
            virtual_time=completion.virtual_time,
            wall_time=completion.wall_time,
            dispatch_time=sent,
            duration=finished - sent,
            steps=completion.steps,
            num_examples=metrics.get(NUM_EXAMPLES),
            train_loss=metrics.get(TRAIN_LOSS, math.nan),
            bytes_down=completion.dispatch.bytes_down,
            bytes_up=completion.bytes_up,
        )
        comm = self.communication()
        row["comm_messages"] = comm.messages
        row["comm_bytes"] = comm.bytes_down + comm.bytes_up
        self.run_log.events.append(row)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """asyncfl evaluates the newest model on the server; no federated evaluation."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """No federated evaluation (see configure_evaluate)."""
        return None


class SyncStrategy(AsyncflStrategy):
    """Round-synchronous training: sample round(C*N) clients, send the global model, wait for
    every reply, apply them in the clock's order. In virtual time a round lasts as long as its
    slowest sampled client. With `round_timeout` > 0 a round ends that many seconds (on the
    run's clock) after it was sent, with what arrived; the clients that missed it are logged
    and count as faulty, like a task without a reply."""

    def __init__(self, fraction_train: float = 1.0, round_timeout: float = 0.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {fraction_train}")
        if round_timeout < 0:
            raise ValueError(f"round_timeout must be >= 0 (0: none), got {round_timeout}")
        self.fraction_train = fraction_train
        self.round_timeout = round_timeout
        self._rng = np.random.default_rng([self.seed, 3])
        self._global: dict[str, np.ndarray] = {}

    @abstractmethod
    def combine(
        self,
        global_arrays: dict[str, np.ndarray],
        client_arrays: list[dict[str, np.ndarray]],
        weights: list[float],
    ) -> dict[str, np.ndarray]:
        """The server rule: the new global model from the applied replies (pure)."""

    def summary(self) -> None:
        log(INFO, "\t%s: fraction_train=%s, clock=%s, clients=%d", type(self).__name__,
            self.fraction_train, self.clock.kind, self.num_clients)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and build one train instruction for each."""
        config = self.train_settings(config)
        size = array_bytes(arrays)
        chosen = [c for c in sample_clients(self._rng, self.num_clients, self.fraction_train)
                  if c not in self.dropped]
        return [self.instruction(arrays, config, server_round - 1, c, size) for c in chosen]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply `combine` to the replies (Flower's API; `start` passes checked updates)."""
        return self.aggregate_updates([parse_reply(r) for r in replies])

    def aggregate_updates(
        self, updates: list[tuple[dict[str, np.ndarray], MetricRecord]]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply `combine` to accepted updates; weights are the clients' num-examples."""
        if not updates:
            return None, None
        weights = [float(metrics[NUM_EXAMPLES]) for _, metrics in updates]
        self._global = self.combine(self._global, [arrays for arrays, _ in updates], weights)
        losses = [metrics.get(TRAIN_LOSS, math.nan) for _, metrics in updates]
        mean_loss = float(np.dot(weights, losses) / sum(weights))
        return arrays_to_record(self._global), MetricRecord(
            {TRAIN_LOSS: mean_loss, NUM_EXAMPLES: int(sum(weights))}
        )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run `num_rounds` rounds; same signature and result as Flower's strategies."""
        loop = self._prepare(grid, timeout)
        log(INFO, "Starting %s for %d rounds", type(self).__name__, num_rounds)
        self.summary()
        train_config = train_config if train_config is not None else ConfigRecord()
        settings = self.train_settings(train_config)
        result = Result(arrays=initial_arrays)
        arrays = initial_arrays
        self._global = record_to_arrays(arrays)
        phases, t = self.phases, time.perf_counter()
        first = 1
        if self.resume is not None:
            state = self.restore()
            first, self._global = state["round"] + 1, state["global"]
            arrays = result.arrays = arrays_to_record(self._global)
        else:
            self.evaluate(evaluate_fn, 0, arrays, result)
        t = phases.lap("evaluate", t)
        for server_round in range(first, num_rounds + 1):
            messages = self.configure_train(server_round, arrays, train_config, grid)
            self.send_round(messages, settings, server_round)
            t = phases.lap("dispatch", t)
            deadline = self.clock.now + self.round_timeout if self.round_timeout else None
            completions = loop.drain(deadline)
            t = phases.lap("wait", t)
            self.evaluate_due(evaluate_fn, server_round - 1, arrays, result, self.clock.now)
            t = phases.lap("evaluate", t)
            usable = [(c, accepted) for c in completions
                      if (accepted := self.accept(c, self._global, server_round))]
            t = phases.lap("deserialize", t)
            new_arrays, train_metrics = self.aggregate_updates([a for _, a in usable])
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
                result.train_metrics_clientapp[server_round] = train_metrics
            t = phases.lap("aggregate", t)
            for completion, (_, metrics) in usable:
                self.record_update(completion, metrics, server_round - 1, server_round)
            last = server_round == num_rounds or self.out_of_time()
            self.progress(server_round, num_rounds)
            t = phases.lap("bookkeeping", t)
            if self.version_evaluated(server_round, last):
                self.evaluate(evaluate_fn, server_round, arrays, result)
            if last:
                self.evaluate_due(evaluate_fn, server_round, arrays, result, self.clock.now,
                                  inclusive=True)
            t = phases.lap("evaluate", t)
            self.checkpoint(server_round, {"round": server_round, "global": self._global})
            t = phases.lap("bookkeeping", t)
            if last:
                break
        return result

    def send_round(self, messages: Iterable[Message], settings: dict, server_round: int) -> None:
        """Push a round's instructions; the virtual duration follows from each task's steps."""
        assert self.loop is not None
        self.loop.send(
            (m, client, self.expected_steps(client, settings), server_round - 1)
            for m in messages
            for client in [self._client_of_node[m.metadata.dst_node_id]]
        )
