"""The ClientApp: local training of the run's task, with injected delays in wall-clock mode."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.config import validate_run_config, with_node_count
from asyncfl.protocol import (
    ARRAYS,
    BATCH_SIZE,
    CARRY_STATE,
    CLIENT_THREADS,
    COMM_DELAY,
    COMPUTE_TIME,
    CONFIG,
    FINAL,
    GRADIENT,
    LOCAL_EPOCHS,
    LOCAL_STEPS,
    LOSS_SUM,
    LR,
    METRICS,
    MODEL_VERSION,
    NUM_EXAMPLES,
    PARTITION_ID,
    RETURN,
    SEGMENT_GRADIENT,
    SEGMENT_START,
    SEGMENT_STEPS,
    STEP_DELAY,
    STEPS,
    TASK_SEED,
    TRAIN_LOSS,
    WEIGHTS,
    arrays_to_record,
    record_to_arrays,
    update_kind_metric,
)
from asyncfl.tasks import TrainOutcome, TrainSettings, load_task
from asyncfl.tasks.base import resolve_device

#: what a segmented task keeps in `context.state` between its segments
SEGMENT_MODEL = "segment.local-model"
SEGMENT_STATS = "segment.stats"

app = ClientApp()


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


def settings_from(config: ConfigRecord, **overrides) -> TrainSettings:
    """The training settings a train instruction carries."""
    fields = dict(
        lr=float(config[LR]),
        local_epochs=int(config.get(LOCAL_EPOCHS, 1)),
        local_steps=int(config.get(LOCAL_STEPS, 0)),
        batch_size=int(config.get(BATCH_SIZE, 0)),
        returns=str(config.get(RETURN, WEIGHTS)),
        seed=int(config.get(TASK_SEED, 0)),
        threads=int(config.get(CLIENT_THREADS, 1)),
    )
    return TrainSettings(**{**fields, **overrides})


def run_task(
    context: Context, config: ConfigRecord, start: dict, settings: TrainSettings
) -> tuple[TrainOutcome, float]:
    """Train, then in wall-clock mode sleep step-delay x steps + comm-delay (the server's
    delay model, or the node's own `--node-config step-delay=<seconds>`); return the outcome
    and the seconds it represents."""
    config_run = run_config(context)
    fault = injected_fault(config_run, partition_id(context))
    if fault == "raise":
        raise RuntimeError("injected fault: the client raised")
    if fault == "silent":
        raise NodeSilent("injected fault: the client went silent")
    task = load_task(config_run)
    started = time.perf_counter()
    outcome = task.train(start, partition_id(context), settings)
    compute_time = time.perf_counter() - started
    step_delay = context.node_config.get(STEP_DELAY, config.get(STEP_DELAY, 0.0))
    injected = float(step_delay) * outcome.steps + float(config.get(COMM_DELAY, 0.0))
    if injected > 0:
        time.sleep(injected)
    return outcome, compute_time + injected


def train_reply(msg: Message, context: Context, arrays: dict | None, metrics: dict) -> Message:
    """A reply with the arrays (if any, corrupted if the client is injected to) and the
    metrics."""
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if arrays is not None:
        fault = injected_fault(run_config(context), partition_id(context))
        if fault in ("nan", "shape"):
            arrays = corrupt(arrays, fault)
        content[ARRAYS] = arrays_to_record(arrays)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received model and reply with weights, delta or gradient."""
    config = msg.content[CONFIG]
    settings = settings_from(config, device=client_device(context))
    start = record_to_arrays(msg.content[ARRAYS])
    outcome, seconds = run_task(context, config, start, settings)
    return train_reply(msg, context, outcome.reply(start, settings.returns), {
        NUM_EXAMPLES: outcome.num_examples,
        TRAIN_LOSS: outcome.train_loss,
        STEPS: outcome.steps,
        MODEL_VERSION: int(config.get(MODEL_VERSION, 0)),
        COMPUTE_TIME: seconds,
        **update_kind_metric(settings.returns),
    })


@app.train("segment")
def train_segment(msg: Message, context: Context) -> Message:
    """Run iterations [segment-start, segment-start + segment-steps) of a task (APSB).

    The local model comes with the message at the task's start or when the worker adopts a
    broadcast; otherwise it is the one the previous segment left in `context.state`, and so
    is the accumulated gradient. With `carry-state` (runs that write checkpoints) the server
    holds that state instead: a segment's reply carries the local model, the gradient so far
    and the loss sum, and the next segment brings them back. The last segment replies with
    the accumulated gradient."""
    config = msg.content[CONFIG]
    state = context.state
    first = int(config[SEGMENT_START]) == 0
    carry = bool(config.get(CARRY_STATE, False))
    if ARRAYS in msg.content:
        local = record_to_arrays(msg.content[ARRAYS])
    else:
        local = record_to_arrays(state[SEGMENT_MODEL])
    settings = settings_from(config, device=client_device(context),
                             local_steps=int(config[SEGMENT_STEPS]),
                             skip_steps=int(config[SEGMENT_START]), returns=GRADIENT)
    outcome, seconds = run_task(context, config, local, settings)
    gradient = outcome.gradient
    losses = outcome.train_loss * outcome.steps
    if not first:
        earlier = record_to_arrays(msg.content[SEGMENT_GRADIENT] if carry
                                   else state[SEGMENT_GRADIENT])
        gradient = {k: earlier[k] + v for k, v in gradient.items()}
        losses += float(config[LOSS_SUM] if carry else state[SEGMENT_STATS][LOSS_SUM])
    steps = int(config[SEGMENT_START]) + outcome.steps
    if not bool(config[FINAL]):
        progress = {STEPS: outcome.steps, COMPUTE_TIME: seconds}
        if carry:
            return Message(RecordDict({
                ARRAYS: arrays_to_record(outcome.weights),
                SEGMENT_GRADIENT: arrays_to_record(gradient),
                METRICS: MetricRecord({**progress, LOSS_SUM: losses}),
            }), reply_to=msg)
        state[SEGMENT_MODEL] = arrays_to_record(outcome.weights)
        state[SEGMENT_GRADIENT] = arrays_to_record(gradient)
        state[SEGMENT_STATS] = MetricRecord({LOSS_SUM: losses})
        return train_reply(msg, context, None, progress)
    for key in (SEGMENT_MODEL, SEGMENT_GRADIENT, SEGMENT_STATS):
        if key in state:
            del state[key]
    return train_reply(msg, context, gradient, {
        NUM_EXAMPLES: outcome.num_examples,
        TRAIN_LOSS: losses / steps,
        STEPS: steps,
        MODEL_VERSION: int(config.get(MODEL_VERSION, 0)),
        COMPUTE_TIME: seconds,
        **update_kind_metric(GRADIENT),
    })


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node is, and how much data it has."""
    task = load_task(run_config(context))
    pid = partition_id(context)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: task.partition_size(pid)})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
