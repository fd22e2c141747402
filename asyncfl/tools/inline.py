"""The inline runtime: a Grid that runs the ClientApp in the server's process.

No Ray, no polling: `pull_messages` runs the ClientApp for each pushed message it is asked
about, so whole runs are fast and deterministic (tests, sweeps), and a task whose reply is
never needed (still in flight when the run ends) is never computed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from asyncfl.config import (
    ONE_AT_A_TIME,
    SIMULATED_CLIENTS,
    check_local_files,
    from_python_kwargs,
    validate_run_config,
)
from asyncfl.protocol import PARTITION_ID, not_a_message
from asyncfl.results import check_output_dir, default_run_name, find_launched_run, run_dir

SERVER_NODE_ID = 1


def random_node_ids(count: int, seed: int = 0) -> list[int]:
    """`count` distinct node ids as Flower's SuperLink hands them out (random uint64, about
    half of them at or above 2**63), drawn from `seed` and sorted, so that partition i goes
    to the i-th smallest id and a run's clients, delays and data stay those of `seed`."""
    return node_id_array(count, seed).tolist()


def node_id_array(count: int, seed: int = 0) -> np.ndarray:
    """`random_node_ids` as a sorted uint64 array (8 bytes a node): a draw of `count`, then
    draws of the shortfall until `count` are distinct."""
    rng = np.random.default_rng([seed, count])
    ids = np.empty(0, dtype=np.uint64)
    while len(ids) < count:
        drawn = rng.integers(2, 2**64, size=count - len(ids), dtype=np.uint64, endpoint=False)
        ids = np.sort(np.concatenate([ids, drawn]))
        ids = ids[np.concatenate([[True], ids[1:] != ids[:-1]])]  # (a repeat drawn again)
    return ids


class NodeContexts(Mapping[int, Context]):
    """One Context per node, made when the node first gets a message (a node that never
    trains costs 8 bytes, its id); node ids in sorted order, node i holding partition i.
    Contexts share one run config (the ClientApp reads it, never writes it)."""

    def __init__(self, node_ids: np.ndarray, run_config: Mapping[str, Any], run_id: int) -> None:
        self._ids = node_ids
        self._run_config = dict(run_config)
        self._run_id = run_id
        self._made: dict[int, Context] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self):
        return iter(self._ids.tolist())

    def __contains__(self, node_id: object) -> bool:  # (without making a Context)
        try:
            self.partition(node_id)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False
        return True

    def partition(self, node_id: int) -> int:
        """The partition (client index) of a node; KeyError for a node that is not here."""
        if not 0 <= node_id < 2**64:
            raise KeyError(node_id)
        i = int(np.searchsorted(self._ids, np.uint64(node_id)))
        if i == len(self._ids) or int(self._ids[i]) != node_id:
            raise KeyError(node_id)
        return i

    def __getitem__(self, node_id: int) -> Context:
        context = self._made.get(node_id)
        if context is None:
            context = self._made[node_id] = Context(
                run_id=self._run_id, node_id=node_id,
                node_config={PARTITION_ID: self.partition(node_id),
                             "num-partitions": len(self._ids)},
                state=RecordDict(), run_config=self._run_config)
        return context


class PartitionSizes(Sequence[int]):
    """Examples per client of asyncfl's own ClientApp, asked of the run's task when needed:
    what each node's `query` reply would say (the task as the ClientApp loads it for
    `context`)."""

    def __init__(self, context: Context, count: int) -> None:
        from asyncfl.client_app import run_config
        from asyncfl.tasks import load_task

        self._task = load_task(run_config(context))
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if not -self._count <= i < self._count:
            raise IndexError(i)
        return int(self._task.partition_size(i % self._count))

    def __iter__(self):  # (the task asked in C's loop, not through Sequence's __getitem__)
        return map(int, map(self._task.partition_size, range(self._count)))


class InlineGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, one Context per node; node ids
    are random 64-bit numbers, as Flower's (`random_node_ids`)."""

    #: no node joins after the start (strategies neither wait for nor look for more)
    fixed_nodes = True

    def __init__(
        self, client_app: ClientApp, run_config: Mapping[str, Any], num_nodes: int,
        run_id: int = 1,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        seed = int(run_config.get("seed", 0))
        self.contexts = NodeContexts(node_id_array(num_nodes, seed), run_config, run_id)
        self._pending: dict[str, Message] = {}
        self._id_prefix, self._id_count = f"{uuid4().hex}-", itertools.count()
        #: with parallel-clients > 1 (or auto where it can), computes pending train replies
        #: P at a time; `parallel_note` says which P runs and why
        self.together, self.parallel_note = None, ONE_AT_A_TIME
        if int(run_config.get("parallel-clients", 1)) != 1:  # (imports torch)
            from asyncfl.tools.together import plan_together

            self.together, self.parallel_note = plan_together(client_app, run_config)
        self.report_silence = run_config.get("clock") != "wall"
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0

    def _new_id(self) -> str:
        """A message id no other message of this process has: the Grid's random prefix and a
        count (uuid4 per message read the system's random source twice per update)."""
        return f"{self._id_prefix}{next(self._id_count):x}"

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def client_order(self) -> tuple[list[int], Sequence[int]] | None:
        """Node ids in partition order and each partition's examples, known without asking
        every node (asyncfl's own ClientApp: what its `query` answers); None for another
        ClientApp, whose nodes must be asked."""
        from asyncfl.client_app import app

        overridden = any(getattr(type(self), name) is not getattr(InlineGrid, name)
                         for name in ("push_messages", "pull_messages", "_reply", "_execute"))
        if self.client_app is not app or overridden or not len(self.contexts):
            return None
        nodes = list(self.contexts)
        return nodes, PartitionSizes(self.contexts[nodes[0]], len(nodes))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = self._new_id()
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = [i for i in dict.fromkeys(message_ids) if i in self._pending]
        if self.together is not None:
            self.together.prepare(wanted, self._pending, self.contexts)
        replies = [self._reply(i, self._pending.pop(i)) for i in wanted]
        return [reply for reply in replies if reply is not None]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _reply(self, message_id: str, message: Message) -> Message | None:
        """The reply computed together with others, else the ClientApp's, with an id of its
        own."""
        reply = self.together.take(message_id) if self.together is not None else None
        if reply is None:
            reply = self._execute(message)
        if reply is not None:
            reply.metadata.__dict__["_message_id"] = self._new_id()
        return reply

    def _execute(self, message: Message) -> Message | None:
        """The ClientApp's reply; an error reply if it raised. A node that went silent: in
        virtual time, the error Flower's SuperLink gives a message whose TTL passed without
        a reply, at once (no wall time has to pass, and nothing else can answer it here);
        with a wall clock, no reply, as from a real silent node (the run's reply timeout or
        round deadline decides)."""
        from asyncfl.client_app import NodeSilent

        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(message, context)
        except NodeSilent:
            if not self.report_silence:
                return None
            reply = Message(Error(ErrorCode.MESSAGE_UNAVAILABLE, "the node never answered (the "
                                  "inline runtime reports it at once)"), reply_to=message)
        except Exception as err:  # a failing client must not stop the run: it is an error reply
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  f"{type(err).__name__}: {err}"), reply_to=message)
        return reply if isinstance(reply, Message) else not_a_message(reply, message)


@dataclass
class SimulationResult:
    """What `simulate` returns: where the results are, and the headline numbers."""

    output_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def read(cls, out: Path) -> SimulationResult:
        """The result of the run whose results folder is `out`."""
        return cls(out, json.loads((out / "summary.json").read_text()),
                   json.loads((out / "config.json").read_text()))

    def final_arrays(self) -> dict[str, np.ndarray]:
        """The final global model, read back from the results folder."""
        with np.load(self.output_dir / "final_model.npz") as data:
            return {k: data[k] for k in data.files}


RUNTIMES = ("inline", "simulation")


def simulate(
    grid_class: type[InlineGrid] = InlineGrid, runtime: str = "inline", **run_config: Any
) -> SimulationResult:
    """Run the ServerApp and ClientApp; keys as in the run config, with underscores
    (`simulate(strategy="fedavg", num_clients=10)`; num_clients=0, the default, means
    10). Returns this run's own results, even when another run with the same output_dir
    and name runs at the same time. `runtime="inline"` runs everything in
    this process; `runtime="simulation"` runs the same through Flower's simulation engine
    (`flwr run` on a private SuperLink; needs the project folder, as an editable install has).
    """
    from asyncfl.client_app import app as client_app
    from asyncfl.server_app import app as server_app

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    overrides = from_python_kwargs(run_config)
    if validate_run_config(overrides)["num-clients"] == 0:
        overrides["num-clients"] = SIMULATED_CLIENTS
    if runtime == "simulation":
        from asyncfl.tools.flower_launcher import run_flower

        app_dir = Path(__file__).resolve().parents[2]
        if not (app_dir / "pyproject.toml").exists():
            raise RuntimeError(f"runtime='simulation' needs the app folder; none at {app_dir}")
        return SimulationResult.read(run_flower(overrides, app_dir))
    config = validate_run_config(overrides)
    check_local_files(config)
    check_output_dir(config)
    # the ServerApp claims the results folder (run-name, or run-name-2 if taken) and writes
    # launch-id into its config.json: that is how this finds its own run's folder
    config["launch-id"] = uuid4().hex
    if not config["run-name"]:
        config["run-name"] = default_run_name(config)
    if config["clock"] == "wall":
        log(WARNING, "clock = wall inline: ClientApps run one at a time in this process, so "
            "their sleeps add up; for clients that really run side by side use "
            "runtime='simulation' or a deployment")
    grid = grid_class(client_app, config, config["num-clients"])
    context = Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=config)
    server_app(grid, context)
    if grid.together is not None:
        log(INFO, "%s", grid.together.report())
    out = find_launched_run(config)
    if out is None:
        raise RuntimeError(f"the run wrote no results to {run_dir(config)}")
    return SimulationResult.read(out)
