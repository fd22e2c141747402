"""The asynchronous loop every async strategy shares: keep M clients busy, fold in each update
as it lands (virtual-finish order or arrival order), re-dispatch from the newest model."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from asyncfl.strategies.base import AsyncflStrategy, EvaluateFn
from asyncfl.strategies.utils import NUM_EXAMPLES, arrays_to_record, record_to_arrays
from asyncfl.timing import Completion


class IdlePool:
    """Idle clients, sampled without replacement in O(1) with a seeded generator."""

    def __init__(self, clients: Iterable[int], rng: np.random.Generator) -> None:
        self._items = list(clients)
        self._rng = rng

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[int]:
        """The idle clients, in the pool's order (for checkpoints)."""
        return list(self._items)

    def add(self, client: int) -> None:
        self._items.append(client)

    def take(self, k: int) -> list[int]:
        """k idle clients, drawn uniformly; they stop being idle."""
        taken = []
        for _ in range(min(k, len(self._items))):
            i = int(self._rng.integers(len(self._items))) if len(self._items) > 1 else 0
            self._items[i], self._items[-1] = self._items[-1], self._items[i]
            taken.append(self._items.pop())
        return taken


#: the longest a client rests after faults in a row (seconds)
MAX_BACKOFF = 60.0


def backoff_seconds(base: float, faults_in_a_row: int, cap: float = MAX_BACKOFF) -> float:
    """How long a client rests before its next task: base * 2^(faults - 1), at most `cap`."""
    if base <= 0 or faults_in_a_row < 1:
        return 0.0
    return min(base * 2.0 ** (faults_in_a_row - 1), cap)


class RestingClients:
    """Clients whose last task failed, each waiting until its wall-clock time to be idle again,
    so that a node that is down is not sent task after task that fails at once."""

    def __init__(self) -> None:
        self._until: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def clients(self) -> list[int]:
        return sorted(self._until)

    def rest(self, client: int, until: float) -> None:
        self._until[client] = until

    def wake(self, now: float) -> list[int]:
        """The clients whose rest is over (in client order); they stop resting."""
        ready = sorted(c for c, until in self._until.items() if until <= now)
        for client in ready:
            del self._until[client]
        return ready

    def next_wake(self) -> float:
        return min(self._until.values())


class VersionStore:
    """Model versions that clients in flight started from, kept only while needed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._models: dict[int, dict[str, np.ndarray]] = {}
        self._users: dict[int, int] = {}
        self.peak = 0  # most versions held at once

    def __len__(self) -> int:
        return len(self._models)

    def dispatched(self, version: int, model: dict[str, np.ndarray], count: int) -> None:
        if self.enabled and count:
            self._models[version] = model
            self._users[version] = self._users.get(version, 0) + count
            self.peak = max(self.peak, len(self._models))

    def returned(self, version: int) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        model = self._models[version]
        self._users[version] -= 1
        if self._users[version] == 0:
            del self._models[version], self._users[version]
        return model


class AsyncStrategy(AsyncflStrategy):
    """Asynchronous training with `concurrency` (M) clients in flight; `num_rounds` counts
    global model versions. Subclasses give the rule that folds one update into the model.

    Where a rule needs the model a client started from (`needs_base`), the server keeps each
    version only while some client in flight started from it: at most M versions.

    With a wall clock, a client whose task failed rests `retry_backoff` seconds (doubling with
    each fault in a row, at most MAX_BACKOFF), then is sent another (whatever else is in
    flight); in virtual time faults are injected and a faulty client is sent its next task at
    once.
    """

    #: whether `apply` needs the model version the client started from
    needs_base = False
    #: the versions kept for clients in flight (FedBuff with weights replies)
    versions: VersionStore | None = None

    def __init__(self, concurrency: int = 0, retry_backoff: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 = every client), got {concurrency}")
        if retry_backoff < 0:
            raise ValueError(f"retry_backoff must be >= 0 (0: retry at once), got {retry_backoff}")
        self.concurrency = concurrency
        self.retry_backoff = retry_backoff
        self._rng = np.random.default_rng([self.seed, 5])

    @abstractmethod
    def apply(
        self, global_arrays: dict[str, np.ndarray], update: dict[str, np.ndarray],
        num_examples: float, staleness: int, base: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        """Fold one client's update in; return the new global model if this update produced
        a new version, else None (e.g. FedBuff's buffer is not full yet). `base` is the model
        the client started from when `needs_base`, else None."""

    def continue_task(self, completion: Completion, arrays: ArrayRecord, version: int) -> bool:
        """Whether `completion` ended only part of a task whose next part this sent (APSB's
        segments); plain async strategies have one message per task."""
        return False

    def on_new_version(self, version: int, arrays: ArrayRecord) -> None:
        """Called once per new global model (APSB broadcasts it)."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ):
        """Async strategies dispatch from `start` as clients become idle."""
        return []

    def aggregate_train(self, server_round: int, replies):
        """Async strategies fold updates in one at a time in `apply`."""
        return None, None

    def summary(self) -> None:
        log(INFO, "\t%s: concurrency=%s, clock=%s, clients=%d", type(self).__name__,
            self.concurrency or "all", self.clock.kind, self.num_clients)

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
        """Run until `num_rounds` global versions exist; Flower's signature and result."""
        loop = self._prepare(grid, timeout)
        in_flight = min(self.concurrency or self.num_clients, self.num_clients)
        log(INFO, "Starting %s for %d versions", type(self).__name__, num_rounds)
        self.summary()
        config = self.train_settings(train_config)
        result = Result(arrays=initial_arrays)
        arrays, version = initial_arrays, 0
        global_arrays = record_to_arrays(arrays)
        phases, t = self.phases, time.perf_counter()
        resting = RestingClients()

        def refill() -> None:
            """Send tasks from the newest model to idle clients until M are in flight."""
            for client in resting.wake(self.clock.now):
                idle.add(client)
            sent = self.dispatch(arrays, config, version, idle.take(in_flight - loop.in_flight))
            bases.dispatched(version, global_arrays, sent)

        if self.resume is not None:
            state = self.restore()
            version, global_arrays = state["version"], state["global"]
            arrays = result.arrays = arrays_to_record(global_arrays)
            idle = IdlePool(state["idle"], self._rng)
            bases = self.versions = state["bases"]
        else:
            self.evaluate(evaluate_fn, 0, arrays, result)
            t = phases.lap("evaluate", t)
            idle = IdlePool(range(self.num_clients), self._rng)
            bases = self.versions = VersionStore(self.needs_base)
            refill()
        t = phases.lap("dispatch", t)
        while version < num_rounds and not self.out_of_time():
            if not loop.in_flight:
                if not resting:
                    log(WARNING, "no client left to train (%d dropped); stopping at version %d",
                        len(self.dropped), version)
                    break
                time.sleep(max(0.0, resting.next_wake() - self.clock.now))
                refill()
                t = phases.lap("wait", t)
                continue
            completion = loop.next_completion(wake_at=resting.next_wake() if resting else None)
            t = phases.lap("wait", t)
            if completion is None:  # a client's rest is over before the next reply came
                refill()
                t = phases.lap("dispatch", t)
                continue
            if self.continue_task(completion, arrays, version):
                t = phases.lap("dispatch", t)
                continue
            self.evaluate_due(evaluate_fn, version, arrays, result, self.clock.now)
            t = phases.lap("evaluate", t)
            base = bases.returned(completion.tag)
            arrived_at = version
            accepted = self.accept(completion, global_arrays, version, base)
            if completion.client not in self.dropped:
                rest = (backoff_seconds(self.retry_backoff, self._faults[completion.client])
                        if accepted is None and self.clock.kind == "wall" else 0.0)
                if rest > 0:
                    resting.rest(completion.client, self.clock.now + rest)
                else:
                    idle.add(completion.client)
            t = phases.lap("deserialize", t)
            if accepted is not None:
                update, metrics = accepted
                new = self.apply(global_arrays, update, float(metrics[NUM_EXAMPLES]),
                                 version - completion.tag, base)
                t = phases.lap("aggregate", t)
                if new is not None:
                    global_arrays, version = new, version + 1
                    arrays = arrays_to_record(new)
                    self.on_new_version(version, arrays)
                    t = phases.lap("serialize", t)
                self.record_update(completion, metrics, arrived_at, version)
                t = phases.lap("bookkeeping", t)
                last = version == num_rounds or self.out_of_time()
                if version > arrived_at and self.version_evaluated(version, last):
                    self.evaluate(evaluate_fn, version, arrays, result)
                    t = phases.lap("evaluate", t)
            if version < num_rounds and not self.out_of_time():
                refill()
                t = phases.lap("dispatch", t)
                if accepted is not None and version > arrived_at:
                    self.checkpoint(version, {"version": version, "global": global_arrays,
                                              "idle": idle.items() + resting.clients(),
                                              "bases": bases})
                    t = phases.lap("bookkeeping", t)
            self.progress(version, num_rounds)
            t = phases.lap("bookkeeping", t)
        self.evaluate_due(evaluate_fn, version, arrays, result, self.clock.now, inclusive=True)
        phases.lap("evaluate", t)
        result.arrays = arrays
        return result
