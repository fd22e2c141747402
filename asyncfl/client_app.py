"""The ClientApp: local training of the run's task, with injected delays in wall-clock mode."""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.config import validate_run_config
from asyncfl.strategies.utils import (
    MODEL_VERSION,
    NUM_EXAMPLES,
    TRAIN_LOSS,
    arrays_to_record,
    record_to_arrays,
)
from asyncfl.tasks import TrainSettings, load_task
from asyncfl.timing.event_loop import STEPS_METRIC

PARTITION_ID = "partition-id"

app = ClientApp()

_validated: dict[tuple, dict] = {}


def run_config(context: Context) -> dict:
    """The node's validated run config (validated once per distinct config)."""
    key = tuple(sorted(context.run_config.items()))
    if key not in _validated:
        if len(_validated) >= 16:
            _validated.clear()
        _validated[key] = validate_run_config(context.run_config)
    return _validated[key]


def partition_id(context: Context) -> int:
    """This node's client index, from `--node-config partition-id=i` (set by simulation)."""
    if PARTITION_ID not in context.node_config:
        raise ValueError(
            f"node_config has no '{PARTITION_ID}': start the SuperNode with "
            f"--node-config \"{PARTITION_ID}=<i> num-partitions=<N>\""
        )
    return int(context.node_config[PARTITION_ID])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received model and reply with weights, delta or gradient.

    In wall-clock mode it then sleeps step-delay x steps + comm-delay: the server's delay
    model, or the node's own `--node-config step-delay=<seconds>` if it declares one."""
    task = load_task(run_config(context))
    config = msg.content["config"]
    settings = TrainSettings(
        lr=float(config["lr"]),
        local_epochs=int(config.get("local-epochs", 1)),
        local_steps=int(config.get("local-steps", 0)),
        batch_size=int(config.get("batch-size", 0)),
        returns=str(config.get("return", "weights")),
        seed=int(config.get("task-seed", 0)),
    )
    started = time.perf_counter()
    start = record_to_arrays(msg.content["arrays"])
    outcome = task.train(start, partition_id(context), settings)
    compute_time = time.perf_counter() - started
    step_delay = context.node_config.get("step-delay", config.get("step-delay", 0.0))
    injected = float(step_delay) * outcome.steps
    injected += float(config.get("comm-delay", 0.0))
    if injected > 0:
        time.sleep(injected)
    metrics = MetricRecord({
        NUM_EXAMPLES: outcome.num_examples,
        TRAIN_LOSS: outcome.train_loss,
        STEPS_METRIC: outcome.steps,
        MODEL_VERSION: int(config.get(MODEL_VERSION, 0)),
        "compute-time": compute_time + injected,
    })
    reply = outcome.reply(start, settings.returns)
    content = RecordDict({"arrays": arrays_to_record(reply), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which client (data partition) this node is, and how much data it has."""
    task = load_task(run_config(context))
    pid = partition_id(context)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: task.partition_size(pid)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
