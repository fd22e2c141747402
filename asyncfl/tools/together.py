"""`parallel-clients`: the inline Grid trains up to P pending train tasks in one computation.

In virtual time every task's inputs are fixed when it is sent (the model it starts from, the
client's data, its seed), and the inline Grid computes a reply only when the event loop asks
for it. So when it asks for one that is not computed yet, the Grid trains it together with
other pending ones (oldest first, up to P in all) as one vectorized computation
(`tasks/batched.py`) and keeps their replies until they are asked for. A reply is the Message
asyncfl's ClientApp would have sent (to float rounding), so no strategy can tell.

Only plain `train` messages to asyncfl's own ClientApp are trained together; any other message
runs the ClientApp as usual. What cannot work is refused when the Grid is built, naming
`parallel-clients` (`plan_together`, and the config checks in `config.py`); with
`parallel-clients = auto` the same cases fall back to one at a time, and P is capped by
memory (`auto_size`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from itertools import islice
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from asyncfl.client import read_instruction, task_reply
from asyncfl.client_app import (
    app,
    client_device,
    injected_corruption,
    task_settings,
    trained_from,
)
from asyncfl.config import (
    ONE_AT_A_TIME,
    PARALLEL_AUTO,
    PARALLEL_AUTO_MAX,
    PARALLEL_AUTO_NO_PSUTIL,
    ConfigError,
    parallel_problem,
)
from asyncfl.protocol import ARRAYS, PARTITION_ID, TRAIN
from asyncfl.tasks import load_task
from asyncfl.tasks.base import resolve_device
from asyncfl.tasks.batched import ClientJob, batching_problem, client_bytes, train_together
from asyncfl.tasks.classification import ClassificationTask


class TrainTogether:
    """Computes the replies of pending train messages P at a time and holds them until the
    Grid is asked for them; memory: P models and gradients while training, plus the replies
    of tasks still in flight."""

    def __init__(self, config: Mapping[str, Any], size: int,
                 task: ClassificationTask | None = None) -> None:
        self.size = size
        self.task = task if task is not None else load_task(config)
        self._ready: dict[str, Message] = {}
        self._alone: set[str] = set()  # ids whose batch failed: the ClientApp answers them
        #: how many tasks each vectorized computation trained (for benchmarks and tests)
        self.batch_sizes: list[int] = []

    def fits(self, message_id: str, message: Message) -> bool:
        """A plain train instruction with a model, not yet computed nor failed together."""
        return (message.metadata.message_type == TRAIN and ARRAYS in message.content
                and message_id not in self._ready and message_id not in self._alone)

    def prepare(self, wanted: list[str], pending: Mapping[str, Message],
                contexts: Mapping[int, Context]) -> None:
        """Compute the wanted replies that fit, each batch filled up with other pending train
        tasks, oldest first (a task with none to join is left to the ClientApp)."""
        todo = [i for i in wanted if self.fits(i, pending[i])]
        while todo:
            batch = todo[:self.size]
            todo = todo[self.size:]
            chosen = set(batch) | set(todo)
            others = (i for i, m in pending.items() if i not in chosen and self.fits(i, m))
            batch += islice(others, self.size - len(batch))
            if len(batch) > 1:  # one alone is faster through the ClientApp
                self._train(batch, pending, contexts)

    @property
    def held(self) -> int:
        """Replies computed ahead and not asked for yet (when the run ends: wasted work)."""
        return len(self._ready)

    def report(self) -> str:
        """What training together did, for the end of a run."""
        batches = self.batch_sizes
        mean = sum(batches) / len(batches) if batches else 0.0
        return (f"parallel-clients = {self.size}: {sum(batches)} tasks trained in "
                f"{len(batches)} batches ({mean:.1f} tasks a batch); {self.held} computed "
                "ahead were never applied (in flight when the run ended)")

    def take(self, message_id: str) -> Message | None:
        """The computed reply to a message, if there is one (handed out once)."""
        self._alone.discard(message_id)
        return self._ready.pop(message_id, None)

    def _train(self, batch: list[str], pending: Mapping[str, Message],
               contexts: Mapping[int, Context]) -> None:
        messages = [pending[i] for i in batch]
        nodes = [contexts[m.metadata.dst_node_id] for m in messages]
        try:
            instructions = [read_instruction(m) for m in messages]
            jobs = [ClientJob(instruction.arrays, int(node.node_config[PARTITION_ID]),
                              task_settings(instruction, client_device(node)))
                    for instruction, node in zip(instructions, nodes, strict=True)]
            started = time.perf_counter()
            outcomes = train_together(self.task, jobs)
            seconds = time.perf_counter() - started
        except Exception:  # e.g. a model of the wrong shape: each gets the ClientApp's reply
            self._alone.update(batch)
            return
        self.batch_sizes.append(len(batch))
        total_steps = max(1, sum(o.steps for o in outcomes))
        for message_id, message, node, instruction, outcome in zip(
                batch, messages, nodes, instructions, outcomes, strict=True):
            # compute-time: the task's share of the batch's time, by its steps
            self._ready[message_id] = task_reply(
                message, node, instruction, trained_from(outcome),
                seconds * outcome.steps / total_steps, injected_corruption)


def free_memory(device: str) -> int | None:
    """Bytes free for training on `device`: free CUDA memory, free RAM (psutil) on the cpu,
    None where it is not known (cpu without psutil)."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def auto_size(task: ClassificationTask, config: Mapping[str, Any], device: str,
              free: int | None = None) -> tuple[int, str]:
    """parallel-clients = auto: how many clients to train together at most, and why (the
    rule of the setting's help text): half the free memory over each client's share
    (`client_bytes`), at most PARALLEL_AUTO_MAX and the number of clients; at most
    PARALLEL_AUTO_NO_PSUTIL where free memory is not known. `free` overrides the measure."""
    if free is None:
        free = free_memory(device)
    clients = int(config["num-clients"]) or PARALLEL_AUTO_MAX
    if free is None:
        size, why = PARALLEL_AUTO_NO_PSUTIL, "free memory unknown (psutil not installed)"
    else:
        each = client_bytes(task, int(config["batch-size"]))
        size = max(1, free // (2 * each))
        why = (f"{free / 2**30:.1f} GiB free on {device}, about {each / 2**20:.2f} MiB per "
               "client")
    size = min(size, PARALLEL_AUTO_MAX, clients)
    return size, why


def plan_together(client_app: ClientApp, config: Mapping[str, Any]
                  ) -> tuple[TrainTogether | None, str]:
    """The batching collaborator an inline Grid running `client_app` uses, and a line that
    says which P runs and why. None (P = 1) when parallel-clients is 1 (or not set), or it
    is auto and the run cannot train clients together (the config, another app than
    asyncfl's own, whose training it reproduces, or the model). Raises ConfigError (naming
    parallel-clients) when P > 1 is asked for and the task or model cannot be trained
    together."""
    size = int(config.get("parallel-clients", 1))
    if size == 1:
        return None, ONE_AT_A_TIME
    auto = size == PARALLEL_AUTO
    label = "parallel-clients = auto" if auto else f"parallel-clients = {size}"
    if client_app is not app:
        return None, f"{label}: one at a time (not asyncfl's ClientApp)"
    if auto and (problem := parallel_problem(config)):
        return None, f"{label}: one at a time ({problem})"
    device = resolve_device(str(config["torch-device"]))
    task = load_task(config)
    problem = batching_problem(task, device)
    if problem and auto:
        return None, f"{label}: one at a time ({problem})"
    if problem:
        raise ConfigError(f"run-config 'parallel-clients' = {size}: {problem}; set "
                          "parallel-clients = 1 to train these clients one at a time")
    if not auto:
        return TrainTogether(config, size, task), f"{label}: up to {size} at a time"
    size, why = auto_size(task, config, device)
    if size <= 1:
        return None, f"{label}: one at a time ({why})"
    return TrainTogether(config, size, task), f"{label}: up to {size} at a time ({why})"


def together_for(client_app: ClientApp, config: Mapping[str, Any]) -> TrainTogether | None:
    """The batching collaborator alone (`plan_together` without its line)."""
    return plan_together(client_app, config)[0]
