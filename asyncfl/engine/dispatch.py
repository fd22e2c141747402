"""Sending tasks: train instructions on the event loop, which clients are idle or resting, and
the model versions clients in flight started from."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from asyncfl.engine import Completion, EventLoop, TrafficCounters
from asyncfl.engine.checkpoint import state_class
from asyncfl.engine.utils import task_seed
from asyncfl.protocol import (
    ARRAYS,
    BATCH_SIZE,
    COMM_DELAY,
    CONFIG,
    LOCAL_EPOCHS,
    LOCAL_STEPS,
    MODEL_VERSION,
    STEP_DELAY,
    TASK_SEED,
    TRAIN,
    array_bytes,
    config_record,
    train_instruction,
)


class Dispatcher:
    """Builds each client's train instruction and sends it on the event loop.

    An instruction carries the run's train `settings` (with what the algorithm fixes and wants
    back), the model version, a shuffling seed fixed by (seed, version, client), and with a
    wall clock the delay the ClientApp must really sleep. `partition_sizes` (examples per
    client, where known) let epoch-based tasks have their virtual duration fixed at dispatch.
    """

    def __init__(self, loop: EventLoop, node_ids: Sequence[int], seed: int, settings: dict,
                 partition_sizes: Sequence[int] | None = None,
                 arrayrecord_key: str = ARRAYS, configrecord_key: str = CONFIG) -> None:
        self.loop = loop
        self.node_ids = list(node_ids)
        self.seed = seed
        self.settings = settings
        #: kept as given: a lazy sequence (the inline Grid's) is never made a list
        self.partition_sizes = partition_sizes
        self.keys = (arrayrecord_key, configrecord_key)
        self._settings_made: tuple[dict, ConfigRecord] | None = None

    def add_nodes(self, node_ids: Iterable[int]) -> list[int]:
        """Clients for nodes that joined the run; returns their indices. A joined client's
        speed in the delay model is that of client (index mod the clients it covers), as a
        trace or profile cycles over clients."""
        first = len(self.node_ids)
        self.node_ids.extend(node_ids)
        delays = self.loop.delays
        covered = len(delays.step_times)
        if covered < len(self.node_ids):
            cycle = [i % covered for i in range(covered, len(self.node_ids))]
            self.loop.delays = replace(
                delays, step_times=np.concatenate([delays.step_times, delays.step_times[cycle]]),
                trace=delays.trace + tuple(delays.trace[i] for i in cycle) if delays.trace
                else ())
        return list(range(first, len(self.node_ids)))

    def instruction(
        self, arrays: ArrayRecord | None, version: int, client: int, model_bytes: int,
        config: dict | None = None, message_type: str = TRAIN, extra: dict | None = None,
    ) -> Message:
        """A train message for one client from the model at `version` (`config`: the
        settings, by default the run's)."""
        config = self.settings if config is None else config
        values = {MODEL_VERSION: version, TASK_SEED: task_seed(self.seed, version, client),
                  **(extra or {})}
        if not self.loop.virtual:
            values[STEP_DELAY] = float(self.loop.delays.step_times[client])
            values[COMM_DELAY] = float(self.loop.delays.comm_time(client, model_bytes,
                                                                  model_bytes))
        # ConfigRecord({**config, **values}): the run's settings are checked into a record once
        base = self._settings_record() if config is self.settings else ConfigRecord(config)
        return train_instruction(arrays, config_record(values, base), self.node_ids[client],
                                 str(version), message_type, *self.keys)

    def _settings_record(self) -> ConfigRecord:
        """The run's settings as a ConfigRecord, made again if they changed."""
        if self._settings_made is None or self._settings_made[0] != self.settings:
            self._settings_made = (dict(self.settings), ConfigRecord(self.settings))
        return self._settings_made[1]

    def expected_steps(self, client: int, config: Mapping) -> int | None:
        """Local steps a task will run, if the server can tell before the reply."""
        if int(config.get(LOCAL_STEPS, 0)) > 0:
            return int(config[LOCAL_STEPS])
        if self.partition_sizes is None or LOCAL_EPOCHS not in config:
            return None
        n = self.partition_sizes[client]
        batch = int(config.get(BATCH_SIZE, 0)) or n
        return int(config[LOCAL_EPOCHS]) * math.ceil(n / batch)

    def send(self, arrays: ArrayRecord, version: int, clients: Iterable[int],
             steps: Mapping[int, int] | None = None) -> int:
        """Send the model at `version` to each client (`steps`: a step count per client that
        overrides the settings'); the tag remembers the version. Returns how many were sent."""
        size = array_bytes(arrays)

        def task(client: int) -> tuple[Message, int, int | None, int]:
            config = (self.settings if steps is None
                      else {**self.settings, LOCAL_STEPS: steps[client]})
            return (self.instruction(arrays, version, client, size, config), client,
                    self.expected_steps(client, config), version)

        return len(self.loop.send((task(c) for c in clients), model_bytes=size))


def seconds_per_step(completion: Completion, virtual: bool) -> float | None:
    """A finished task's seconds on the run's clock (communication included, as the server
    sees it) over its steps; None for a task that failed or ran no steps."""
    if not completion.ok or completion.steps <= 0:
        return None
    return (completion.ended_at(virtual) - completion.sent_at(virtual)) / completion.steps


class WholeTasks:
    """One message per task: what every strategy but APSB sends (APSB's `SegmentedTasks`
    sends a task in parts and broadcasts every new model)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def start(self, arrays: ArrayRecord, version: int, clients: Iterable[int]) -> int:
        return self.dispatcher.send(arrays, version, clients)

    def continued(self, completion: Completion, arrays: ArrayRecord, version: int) -> bool:
        """Whether `completion` ended only part of a task whose next part this sent."""
        return False

    def finished(self, completion: Completion) -> None:
        """Called with every completion of a whole task, before its update is checked."""

    def holds(self, client: int) -> bool:
        """Whether an idle client must wait before its next task (FedCompass: until its
        arrival group is aggregated)."""
        return False

    def next_wake(self) -> float | None:
        """When (on the run's clock) the algorithm has work without a reply: a buffer to
        aggregate at a deadline. None: never."""
        return None

    def due(self, now: float) -> int | None:
        """The key of a buffer the rule must aggregate now (`rule.aggregate`), marked as
        aggregated; None: none."""
        return None

    def new_version(self, version: int, arrays: ArrayRecord) -> None:
        """Called once per new global model."""

    def traffic(self) -> TrafficCounters:
        """The transfers the algorithm makes: here, the Grid's messages."""
        return self.dispatcher.loop.traffic

    def snapshot(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        """Nothing to restore: the event loop's snapshot holds the tasks in flight."""


class WindowedTasks(WholeTasks):
    r"""Tasks sized to a time window (TimelyFL's adaptive local work, Zhang et al., 2023): a
    client whose seconds per step t_i the server has measured is sent

    .. math::
        k_i = \min(K, \max(1, \lfloor T / t_i \rfloor))

    steps, K the run's `local-steps`, T the `window`; before its first reply, K. t_i is its
    latest task's seconds on the run's clock (communication included, as the server sees
    it) over its steps. So slow clients send smaller, fresher updates instead of stale ones.
    """

    def __init__(self, dispatcher: Dispatcher, window: float) -> None:
        super().__init__(dispatcher)
        self.window = window
        self.full = int(dispatcher.settings.get(LOCAL_STEPS, 0))
        if self.full < 1:
            raise ValueError("work_window sizes tasks in local steps: train_config needs "
                             f"local-steps >= 1 (got {self.full})")
        self.step_time: dict[int, float] = {}

    def steps(self, client: int) -> int:
        """k_i for the client's next task."""
        seconds = self.step_time.get(client)
        if not seconds:
            return self.full
        return min(self.full, max(1, math.floor(self.window / seconds)))

    def start(self, arrays: ArrayRecord, version: int, clients: Iterable[int]) -> int:
        clients = list(clients)
        return self.dispatcher.send(arrays, version, clients,
                                    {c: self.steps(c) for c in clients})

    def finished(self, completion: Completion) -> None:
        seconds = seconds_per_step(completion, self.dispatcher.loop.virtual)
        if seconds is not None:
            self.step_time[completion.client] = seconds

    def snapshot(self) -> dict:
        return {"step_time": dict(self.step_time)}

    def restore(self, state: dict) -> None:
        self.step_time = dict(state.get("step_time", {}))


class IdlePool:
    """Idle clients, sampled without replacement in O(1) with a seeded generator: a draw
    swaps a uniformly chosen client with the last and takes it. Held in an integer array
    (8 bytes a client: a million idle clients are 8 MB, not 36 MB of Python ints)."""

    def __init__(self, clients: Iterable[int], rng: np.random.Generator) -> None:
        items = np.arange(clients.start, clients.stop, clients.step) if isinstance(
            clients, range) else np.fromiter(clients, dtype=np.int64)
        self._items = items.astype(np.int64, copy=False)
        self._size = len(self._items)
        self._rng = rng

    def __len__(self) -> int:
        return self._size

    def items(self) -> list[int]:
        """The idle clients, in the pool's order (for checkpoints)."""
        return self._items[:self._size].tolist()

    def newest(self, k: int) -> list[int]:
        """The last k clients of the pool's order (the most recently idle, where none was
        drawn since), without listing the rest; k = 0: all of them."""
        return self._items[max(0, self._size - k) if k > 0 else 0:self._size].tolist()

    def add(self, client: int) -> None:
        if self._size == len(self._items):
            self._items = np.concatenate([self._items, np.empty(max(16, self._size),
                                                                dtype=np.int64)])
        self._items[self._size] = client
        self._size += 1

    def take(self, k: int) -> list[int]:
        """k idle clients, drawn uniformly; they stop being idle."""
        taken = []
        items = self._items
        for _ in range(min(k, self._size)):
            last = self._size - 1
            i = int(self._rng.integers(self._size)) if self._size > 1 else 0
            chosen = int(items[i])
            items[i] = items[last]
            self._size = last
            taken.append(chosen)
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

    def until(self) -> dict[int, float]:
        """Each resting client's end of rest."""
        return dict(self._until)

    def rest(self, client: int, until: float) -> None:
        self._until[client] = until

    def wake(self, now: float) -> list[int]:
        """The clients whose rest is over (in client order); they stop resting."""
        ready = sorted(c for c, until in self._until.items() if until <= now)
        for client in ready:
            del self._until[client]
        return ready

    def next_wake(self) -> float | None:
        return min(self._until.values()) if self._until else None


@state_class
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
        """The model a returning task started from, if it was kept (it may have been
        dispatched before the store was enabled)."""
        model = self._models.get(version)
        if model is None:
            return None
        self._users[version] -= 1
        if self._users[version] == 0:
            del self._models[version], self._users[version]
        return model
