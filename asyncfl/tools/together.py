"""`parallel-clients`: the inline Grid trains up to P pending train tasks in one computation.

In virtual time every task's inputs are fixed when it is sent (the model it starts from, the
client's data, its seed), and the inline Grid computes a reply only when the event loop asks
for it. So when it asks for one that is not computed yet, the Grid trains it together with
other pending ones (oldest first, up to P in all) as one vectorized computation
(`tasks/batched.py`) and keeps their replies until they are asked for. A reply is the Message
asyncfl's ClientApp would have sent (to float rounding), so no strategy can tell.

Only plain `train` messages to asyncfl's own ClientApp are trained together; any other message
runs the ClientApp as usual. What cannot work is refused when the Grid is built, naming
`parallel-clients` (`check_together`, and the config checks in `config.py`).
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
from asyncfl.config import ConfigError
from asyncfl.protocol import ARRAYS, PARTITION_ID, TRAIN
from asyncfl.tasks import load_task
from asyncfl.tasks.base import resolve_device
from asyncfl.tasks.batched import ClientJob, batching_problem, train_together


class TrainTogether:
    """Computes the replies of pending train messages P at a time and holds them until the
    Grid is asked for them; memory: P models and gradients while training, plus the replies
    of tasks still in flight."""

    def __init__(self, config: Mapping[str, Any], size: int) -> None:
        self.size = size
        self.task = load_task(config)
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


def together_for(client_app: ClientApp, config: Mapping[str, Any]) -> TrainTogether | None:
    """The batching collaborator an inline Grid running `client_app` uses: None when
    parallel-clients is 1 (or not set) or the app is not asyncfl's own, whose training it
    reproduces. Raises ConfigError (naming parallel-clients) when the run's task or model
    cannot be trained together."""
    size = int(config.get("parallel-clients", 1))
    if size <= 1 or client_app is not app:
        return None
    device = resolve_device(str(config["torch-device"]))
    problem = batching_problem(load_task(config), device)
    if problem:
        raise ConfigError(f"run-config 'parallel-clients' = {size}: {problem}; set "
                          "parallel-clients = 1 to train these clients one at a time")
    return TrainTogether(config, size)
