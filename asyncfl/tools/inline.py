"""The inline runtime: a Grid that runs the ClientApp in the server's process.

No Ray, no polling: `pull_messages` runs the ClientApp for each pushed message it is asked
about, so whole runs are fast and deterministic (tests, sweeps), and a task whose reply is
never needed (still in flight when the run ends) is never computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
    SIMULATED_CLIENTS,
    check_local_files,
    from_python_kwargs,
    validate_run_config,
)
from asyncfl.protocol import PARTITION_ID, not_a_message
from asyncfl.results import check_output_dir, default_run_name, find_launched_run, run_dir
from asyncfl.tools.together import plan_together

SERVER_NODE_ID = 1


def random_node_ids(count: int, seed: int = 0) -> list[int]:
    """`count` distinct node ids as Flower's SuperLink hands them out (random uint64, about
    half of them at or above 2**63), drawn from `seed` and sorted, so that partition i goes
    to the i-th smallest id and a run's clients, delays and data stay those of `seed`."""
    rng = np.random.default_rng([seed, count])
    ids: set[int] = set()
    while len(ids) < count:
        ids.update(int(i) for i in rng.integers(2, 2**64, size=count - len(ids),
                                                dtype=np.uint64, endpoint=False))
    return sorted(ids)


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
        self.contexts = {
            node_id: Context(
                run_id=run_id, node_id=node_id,
                node_config={PARTITION_ID: i, "num-partitions": num_nodes},
                state=RecordDict(), run_config=dict(run_config),
            )
            for i, node_id in enumerate(random_node_ids(num_nodes, seed))
        }
        self._pending: dict[str, Message] = {}
        #: with parallel-clients > 1 (or auto where it can), computes pending train replies
        #: P at a time; `parallel_note` says which P runs and why
        self.together, self.parallel_note = plan_together(client_app, run_config)
        self.report_silence = run_config.get("clock") != "wall"
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0

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

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
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
            reply.metadata.__dict__["_message_id"] = str(uuid4())
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
