"""asyncfl's ClientApp: the run's task trained through the client helper (`asyncfl.client`:
tasks, segments, replies, wall-clock delays), with injected faults and the `query` that
tells the server which client a node is."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.client import LocalTraining, Trained, TrainInstruction, always_reply, register
from asyncfl.config import validate_run_config, with_node_count
from asyncfl.protocol import METRICS, NUM_EXAMPLES, PARTITION_ID, record_to_arrays
from asyncfl.tasks import TrainOutcome, TrainSettings, load_task
from asyncfl.tasks.base import resolve_device

app = ClientApp(mods=[always_reply])


class NodeSilent(Exception):
    """An injected fault: the node does not answer. The inline runtime drops the reply; in
    Flower's runtimes it arrives as an error reply."""


@lru_cache(maxsize=8)
def _faulty_clients(seed: int, num_clients: int, fraction: float) -> tuple[int, ...]:
    count = round(fraction * num_clients)
    chosen = np.random.default_rng([seed, 8]).choice(num_clients, count, replace=False)
    return tuple(sorted(int(c) for c in chosen))


def injected_fault(config: dict, pid: int) -> str:
    """How this client misbehaves under `fault-fraction` / `fault-kinds` ('' if it does
    not): a seeded choice of clients, the kinds cycled over them."""
    if config["fault-fraction"] == 0:
        return ""
    faulty = _faulty_clients(config["seed"], config["num-clients"], config["fault-fraction"])
    if pid not in faulty:
        return ""
    kinds = config["fault-kinds"].split(",")
    return kinds[faulty.index(pid) % len(kinds)]


def corrupt(arrays: dict, kind: str) -> dict:
    """The reply of a client injected with `nan` or `shape`."""
    key = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    bad = np.array(arrays[key], copy=True)
    if kind == "nan":
        bad.flat[0] = np.nan
    elif kind == "shape":
        bad = np.append(bad, 0.0).astype(bad.dtype)
    return {**arrays, key: bad}


_validated: dict[tuple, dict] = {}
_by_identity: dict[int, tuple[dict, dict]] = {}


def run_config(context: Context) -> dict:
    """The node's validated run config, validated once per distinct config (and looked up
    by identity first: this runs twice per message)."""
    raw = context.run_config
    hit = _by_identity.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1]
    key = (tuple(sorted(raw.items())), context.node_config.get("num-partitions"))
    if key not in _validated:
        if len(_validated) >= 16:
            _validated.clear()
        _validated[key] = with_node_count(validate_run_config(raw), context.node_config)
    if len(_by_identity) >= 4096:
        _by_identity.clear()
    _by_identity[id(raw)] = (raw, _validated[key])
    return _validated[key]


def partition_id(context: Context) -> int:
    """This node's client index, from `--node-config partition-id=i` (set by simulation)."""
    if PARTITION_ID not in context.node_config:
        raise ValueError(
            f"node_config has no '{PARTITION_ID}': start the SuperNode with "
            f"--node-config \"{PARTITION_ID}=<i> num-partitions=<N>\""
        )
    return int(context.node_config[PARTITION_ID])


def client_device(context: Context) -> str:
    """Where this node trains: its own `--node-config torch-device=...`, else the run's."""
    name = context.node_config.get("torch-device", run_config(context)["torch-device"])
    return resolve_device(str(name))


def run_task(context: Context, start: dict, settings: TrainSettings) -> TrainOutcome:
    """Local training of this node's partition, unless the node is injected to raise or to go
    silent (`NodeSilent`)."""
    config_run = run_config(context)
    fault = injected_fault(config_run, partition_id(context))
    if fault == "raise":
        raise RuntimeError("injected fault: the client raised")
    if fault == "silent":
        raise NodeSilent("injected fault: the client went silent")
    return load_task(config_run).train(start, partition_id(context), settings)


def task_training(context: Context, _instruction: TrainInstruction) -> LocalTraining:
    """The run's task as the client helper's `LocalTraining`: `task.train` on this node's
    partition, resuming a segmented task with `skip_steps`, with the exact gradient sum when
    the instruction asks for gradients."""
    device = client_device(context)

    def train(arrays: dict, first_step: int, num_steps: int,
              instruction: TrainInstruction) -> Trained:
        settings = task_settings(instruction, device, first_step, num_steps)
        return trained_from(run_task(context, arrays, settings))

    return train


def task_settings(instruction: TrainInstruction, device: str, first_step: int = 0,
                  num_steps: int | None = None) -> TrainSettings:
    """The task's training settings for an instruction (steps [first_step, first_step +
    num_steps); num_steps None: the instruction's own)."""
    if instruction.lr is None:
        raise ValueError("asyncfl's ClientApp trains with the lr of the train config; "
                         "the instruction has none")
    return TrainSettings(
        lr=instruction.lr, local_epochs=instruction.local_epochs,
        local_steps=instruction.local_steps if num_steps is None else num_steps,
        batch_size=instruction.batch_size, returns=instruction.returns, seed=instruction.seed,
        skip_steps=first_step, threads=instruction.threads, device=device)


def trained_from(outcome: TrainOutcome) -> Trained:
    """A task's training outcome as the client helper's `Trained`."""
    return Trained(outcome.weights, outcome.steps, outcome.train_loss, outcome.num_examples,
                   outcome.gradient)


def injected_corruption(update: dict, context: Context) -> dict:
    """The update a client injected with `nan` or `shape` sends instead of its own."""
    fault = injected_fault(run_config(context), partition_id(context))
    return corrupt(update, fault) if fault in ("nan", "shape") else update


register(app, task_training, transform=injected_corruption)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation (`fraction-evaluate`): the received model on this client's own
    examples."""
    task = load_task(run_config(context))
    pid = partition_id(context)
    arrays = record_to_arrays(next(iter(msg.content.array_records.values())))
    metrics = task.evaluate_partition(arrays, pid, client_device(context))
    return Message(RecordDict({METRICS: MetricRecord(
        {**metrics, NUM_EXAMPLES: task.partition_size(pid)})}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node is, and how much data it has."""
    task = load_task(run_config(context))
    pid = partition_id(context)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: task.partition_size(pid)})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
