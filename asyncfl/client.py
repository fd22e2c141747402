"""What a ClientApp needs so that every asyncfl strategy works with its own training code.

Flower's FedAvg contract (weights back, `num-examples`) is enough for most strategies. Some
algorithms need more from the client: a delta or the gradient sum instead of weights (FedBuff
with `client_returns="delta"`, A-LSGD, ASGD), the local steps the server assigned (ESync), the
seconds a task took (ESync under a wall clock), and tasks sent in segments whose worker adopts
a newer global model at a segment boundary while its accumulated gradient keeps growing
(APSB). This module does all of that around a small functional core: your training is a
`LocalTraining`, a callable that runs some local steps from given arrays and says what it did
(`Trained`); `handle_train` turns a train or `train.segment` message into that call and the
reply. For a torch model and a per-step function, `TorchTraining` is the `LocalTraining` and
`register` adds both handlers to a ClientApp:

    app = ClientApp()

    def training(context: Context, instruction: TrainInstruction) -> TorchTraining:
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=instruction.lr)
        def step(index: int) -> float:   # one optimizer step on the next batch
            ...
            return loss.item()
        return TorchTraining(model, step, steps_per_epoch=len(loader),
                             num_examples=len(loader.dataset))

    register(app, training)

Gradient replies: the training's exact gradient sum where it gives one (`Trained.gradient`),
else the pseudo-gradient (w_start - w_end) / lr, summed over a task's segments: exact for plain
SGD, the displacement in units of lr otherwise. So the optimizer must use `instruction.lr`.
Imports only flwr, numpy and `asyncfl.protocol` (torch only in `TorchTraining`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.protocol import (
    ARRAYS,
    BATCH_SIZE,
    CARRY_STATE,
    CLIENT_THREADS,
    COMM_DELAY,
    COMPUTE_TIME,
    CONFIG,
    DELTA,
    FINAL,
    GRADIENT,
    LOCAL_EPOCHS,
    LOCAL_STEPS,
    LOSS_SUM,
    LR,
    METRICS,
    MODEL_VERSION,
    NUM_EXAMPLES,
    RETURN,
    RETURN_KINDS,
    SEGMENT,
    SEGMENT_GRADIENT,
    SEGMENT_START,
    SEGMENT_STEPS,
    STEP_DELAY,
    STEPS,
    TASK_SEED,
    TRAIN_LOSS,
    WEIGHT_KEY,
    WEIGHTS,
    arrays_to_record,
    metric_record,
    not_a_message,
    pseudo_gradient,
    record_dict,
    record_to_arrays,
    update_kind_metric,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LocalTraining", "TorchTraining", "TrainInstruction", "Trained", "TrainingFactory",
           "UpdateTransform", "always_reply", "evaluate_reply", "handle_train",
           "pseudo_gradient", "read_instruction", "register", "task_reply", "task_update"]

Arrays = dict[str, np.ndarray]
R = TypeVar("R", ArrayRecord, ConfigRecord)

#: what a segmented task keeps in `context.state` between its segments
SEGMENT_MODEL = "segment.local-model"
SEGMENT_STATS = "segment.stats"


@dataclass(frozen=True)
class TrainInstruction:
    """What a train (or `train.segment`) message asks for.

    `arrays` is the model to start from; None in a segment that continues on the worker's own
    model. `lr` is the server's client learning rate (None if it sent none): your optimizer
    must use it, since pseudo-gradients divide by it. `local_steps` 0 means `local_epochs`
    epochs. A segment runs the task's steps [segment_start, segment_start + segment_steps);
    the last one (`final`) replies. `step_delay` / `comm_delay` are the seconds the server
    wants slept per step and per task (wall-clock simulation of slow clients). `weight_key` is
    the metric the strategy weights by (its `weighted_by_key`; the example count goes under it
    as well as under `num-examples`). `config` is the
    whole ConfigRecord, for keys of your own.
    """

    arrays: Arrays | None
    lr: float | None
    local_steps: int = 0
    local_epochs: int = 1
    batch_size: int = 0
    returns: str = WEIGHTS
    seed: int = 0
    model_version: int = 0
    threads: int = 1
    segment: bool = False
    segment_start: int = 0
    segment_steps: int = 0
    final: bool = True
    carry_state: bool = False
    step_delay: float = 0.0
    comm_delay: float = 0.0
    weight_key: str = NUM_EXAMPLES
    config: ConfigRecord = field(default_factory=ConfigRecord, compare=False, repr=False)


def _only(message: Message, kind: type[R], preferred: str, skip: tuple[str, ...] = ()
          ) -> R | None:
    """The message's record of type `kind`: the one named `preferred`, else the only one."""
    records = message.content.items()  # (a view of the plain dict inside)
    for key, record in records:
        if key == preferred and isinstance(record, kind):
            return record
    found = [r for k, r in records if isinstance(r, kind) and k not in skip]
    if len(found) > 1:
        raise ValueError(f"the message holds {len(found)} {kind.__name__}s and none named "
                         f"{preferred!r}: which one is meant?")
    return found[0] if found else None


def read_instruction(message: Message) -> TrainInstruction:
    """Parse a train instruction. Records are found by type, so a ServerApp that names them
    its own way (Flower's `arrayrecord_key` / `configrecord_key`) works too."""
    record = _only(message, ArrayRecord, ARRAYS, skip=(SEGMENT_GRADIENT,))
    config = _only(message, ConfigRecord, CONFIG)
    if config is None:
        config = ConfigRecord()
    segment = message.metadata.message_type == SEGMENT
    if record is None and not segment:
        raise ValueError("a train message must carry the model (an ArrayRecord)")
    values = dict(config.items())  # (a plain dict: most keys are absent, and cheap to miss)
    returns = str(values.get(RETURN, WEIGHTS))
    if returns not in RETURN_KINDS:
        raise ValueError(f"{RETURN!r} must be one of {RETURN_KINDS}, got {returns!r}")
    return TrainInstruction(
        arrays=None if record is None else record_to_arrays(record),
        lr=float(values[LR]) if LR in values else None,
        local_steps=int(values.get(LOCAL_STEPS, 0)),
        local_epochs=int(values.get(LOCAL_EPOCHS, 1)),
        batch_size=int(values.get(BATCH_SIZE, 0)),
        returns=GRADIENT if segment else returns,
        seed=int(values.get(TASK_SEED, 0)),
        model_version=int(values.get(MODEL_VERSION, 0)),
        threads=int(values.get(CLIENT_THREADS, 1)),
        segment=segment,
        segment_start=int(values.get(SEGMENT_START, 0)),
        segment_steps=int(values.get(SEGMENT_STEPS, 0)),
        final=bool(values.get(FINAL, True)),
        carry_state=bool(values.get(CARRY_STATE, False)),
        step_delay=float(values.get(STEP_DELAY, 0.0)),
        comm_delay=float(values.get(COMM_DELAY, 0.0)),
        weight_key=str(values.get(WEIGHT_KEY, NUM_EXAMPLES)),
        config=config,
    )


@dataclass(frozen=True)
class Trained:
    """What a `LocalTraining` call did: the model after its last step, the steps it ran, their
    mean loss, the examples it trains on and, optionally, the exact sum of the step gradients
    (asked for when `instruction.returns` is `gradient`; without it the pseudo-gradient is
    used). `metrics` (numbers) of your own go into the reply as they are."""

    arrays: Arrays
    steps: int
    loss: float
    num_examples: int
    gradient: Arrays | None = None
    metrics: Mapping[str, int | float] = field(default_factory=dict)


class LocalTraining(Protocol):
    """Local training as a function: from `arrays`, run `num_steps` steps of the task (0: the
    instruction's `local_epochs` epochs), the first being the task's step `first_step` (a
    segment continues the task's batch sequence there)."""

    def __call__(self, arrays: Arrays, first_step: int, num_steps: int,
                 instruction: TrainInstruction) -> Trained: ...


#: builds the training for one message (it gets the instruction, e.g. for the lr)
TrainingFactory = Callable[[Context, TrainInstruction], LocalTraining]
#: applied to a reply's update before it is sent (clipping, noise, compression, faults)
UpdateTransform = Callable[[Arrays, Context], Arrays]


def task_update(start: Arrays, trained: Trained, returns: str, lr: float | None) -> Arrays:
    """What a whole task replies: the weights, the delta from `start`, or the gradient sum."""
    if returns == WEIGHTS:
        return trained.arrays
    if returns == DELTA:
        return {k: v - start[k] for k, v in trained.arrays.items()}
    if trained.gradient is not None:
        return trained.gradient
    return pseudo_gradient(start, trained.arrays, lr)


def _timed(training: LocalTraining, arrays: Arrays, first_step: int, num_steps: int,
           instruction: TrainInstruction, context: Context) -> tuple[Trained, float]:
    """Train, then sleep step-delay x steps + comm-delay (the server's, or the node's own
    `--node-config step-delay=<seconds>`); the seconds the call represents."""
    started = time.perf_counter()
    trained = training(arrays, first_step, num_steps, instruction)
    seconds = time.perf_counter() - started
    step_delay = context.node_config.get(STEP_DELAY, instruction.step_delay)
    injected = float(step_delay) * trained.steps + instruction.comm_delay
    if injected > 0:
        time.sleep(injected)
    return trained, seconds + injected


def _reply(message: Message, context: Context, update: Arrays | None,
           metrics: Mapping[str, int | float], transform: UpdateTransform | None) -> Message:
    content = {}
    if update is not None:
        content[ARRAYS] = arrays_to_record(update if transform is None
                                           else transform(update, context))
    content[METRICS] = metric_record(metrics)
    return Message(content=record_dict(content), reply_to=message)


def evaluate_reply(message: Message, metrics: Mapping[str, int | float],
                   num_examples: int) -> Message:
    """The reply to an evaluate message: your `metrics`, and the example count under
    `num-examples` and under the key the strategy weighs by (the instruction's `weight-key`,
    as in train replies), so a strategy with its own `weighted_by_key` counts the reply."""
    config = _only(message, ConfigRecord, CONFIG)
    key = str(config.get(WEIGHT_KEY, NUM_EXAMPLES)) if config is not None else NUM_EXAMPLES
    return Message(RecordDict({METRICS: MetricRecord(
        {**metrics, NUM_EXAMPLES: num_examples, key: num_examples})}), reply_to=message)


def _whole_task(message: Message, context: Context, instruction: TrainInstruction,
                training: LocalTraining, transform: UpdateTransform | None) -> Message:
    assert instruction.arrays is not None
    trained, seconds = _timed(training, instruction.arrays, 0, instruction.local_steps,
                              instruction, context)
    return task_reply(message, context, instruction, trained, seconds, transform)


def task_reply(message: Message, context: Context, instruction: TrainInstruction,
               trained: Trained, seconds: float,
               transform: UpdateTransform | None = None) -> Message:
    """The reply to a whole train task once `trained` (in `seconds`): the one place its
    records and metric keys are decided (trainers that bypass `handle_train`, like the inline
    runtime's `parallel-clients`, use it too)."""
    assert instruction.arrays is not None
    update = task_update(instruction.arrays, trained, instruction.returns, instruction.lr)
    return _finished(message, context, instruction, update, trained, trained.loss,
                     trained.steps, seconds, transform)


def _finished(message: Message, context: Context, instruction: TrainInstruction,
              update: Arrays, trained: Trained, loss: float, steps: int, seconds: float,
              transform: UpdateTransform | None) -> Message:
    """A finished task's reply (whole, or its final segment): the update, of the kind the
    instruction asked for, and the metrics strategies read."""
    return _reply(message, context, update, {
        **trained.metrics,
        NUM_EXAMPLES: trained.num_examples,
        instruction.weight_key: trained.num_examples,
        TRAIN_LOSS: loss,
        STEPS: steps,
        MODEL_VERSION: instruction.model_version,
        COMPUTE_TIME: seconds,
        **update_kind_metric(instruction.returns),
    }, transform)


def _segment(message: Message, context: Context, instruction: TrainInstruction,
             training: LocalTraining, transform: UpdateTransform | None) -> Message:
    """One segment of a task: the local model is the message's (the task's start, or a
    broadcast the worker adopts) or the one the previous segment left; the gradient sum and
    the loss sum carry on across segments, in `context.state` or, with `carry-state`, in the
    messages (the server holds them: runs that checkpoint, whose resumed nodes are fresh)."""
    state, carry = context.state, instruction.carry_state
    local = instruction.arrays
    if local is None:
        if SEGMENT_MODEL not in state:
            raise ValueError("a continuation segment arrived, but this node holds no local "
                             "model (was its state lost? use carry-state)")
        local = record_to_arrays(state[SEGMENT_MODEL])
    trained, seconds = _timed(training, local, instruction.segment_start,
                              instruction.segment_steps, instruction, context)
    gradient = (trained.gradient if trained.gradient is not None
                else pseudo_gradient(local, trained.arrays, instruction.lr))
    losses = trained.loss * trained.steps
    if instruction.segment_start > 0:
        earlier = record_to_arrays(message.content[SEGMENT_GRADIENT] if carry
                                   else state[SEGMENT_GRADIENT])
        gradient = {k: earlier[k] + v for k, v in gradient.items()}
        losses += float(instruction.config[LOSS_SUM] if carry
                        else state[SEGMENT_STATS][LOSS_SUM])
    if not instruction.final:
        progress = {STEPS: trained.steps, COMPUTE_TIME: seconds}
        if carry:
            return Message(RecordDict({
                ARRAYS: arrays_to_record(trained.arrays),
                SEGMENT_GRADIENT: arrays_to_record(gradient),
                METRICS: MetricRecord({**progress, LOSS_SUM: losses}),
            }), reply_to=message)
        state[SEGMENT_MODEL] = arrays_to_record(trained.arrays)
        state[SEGMENT_GRADIENT] = arrays_to_record(gradient)
        state[SEGMENT_STATS] = MetricRecord({LOSS_SUM: losses})
        return _reply(message, context, None, progress, None)
    for key in (SEGMENT_MODEL, SEGMENT_GRADIENT, SEGMENT_STATS):
        if key in state:
            del state[key]
    steps = instruction.segment_start + trained.steps
    return _finished(message, context, instruction, gradient, trained, losses / steps, steps,
                     seconds, transform)  # a segment's instruction returns the gradient


def handle_train(message: Message, context: Context, training: LocalTraining, *,
                 transform: UpdateTransform | None = None,
                 instruction: TrainInstruction | None = None) -> Message:
    """The reply to a train or `train.segment` message, `training` doing the local steps.

    A whole task replies with one ArrayRecord (weights, delta or gradient sum, as the
    instruction's `return` asks) and one MetricRecord: `num-examples`, `train-loss`,
    `local-steps` (steps run), `model-version` (the version it started from), `compute-time`
    (seconds, injected delay included) and `update-kind` unless the arrays are weights. A
    segment replies with its progress; the final one with the task's gradient sum.
    `transform` sees every update before it is sent. `instruction`: if already parsed.
    """
    if instruction is None:
        instruction = read_instruction(message)
    handle = _segment if instruction.segment else _whole_task
    return handle(message, context, instruction, training, transform)


def always_reply(message: Message, context: Context,
                 call_next: Callable[[Message, Context], Message]) -> Message:
    """A Flower mod (`ClientApp(mods=[always_reply])`) that answers a call whose function
    returned None or anything but a Message with an error reply: Flower's runtimes send
    nothing back for it, and the server would wait for a silent node until reply-timeout."""
    reply = call_next(message, context)
    return reply if isinstance(reply, Message) else not_a_message(reply, message)


def register(app: ClientApp, make_training: TrainingFactory, *,
             transform: UpdateTransform | None = None) -> None:
    """Add `train` and `train.segment` handlers to `app`: each message builds its training
    with `make_training(context, instruction)` and is answered by `handle_train`."""

    def train(message: Message, context: Context) -> Message:
        instruction = read_instruction(message)
        return handle_train(message, context, make_training(context, instruction),
                            transform=transform, instruction=instruction)

    app.train()(train)
    app.train(SEGMENT.split(".", 1)[1])(train)


class TorchTraining:
    """A torch model and a per-step function as a `LocalTraining`.

    `step(index)` runs one optimizer step on the model, on the batch for the task's step
    `index` (or simply the next batch), and returns its loss. The arrays are the model's
    state_dict (keys and dtypes kept: integer buffers stay integers), loaded before the steps
    and read after them. `steps_per_epoch` sizes epoch-based tasks; `num_examples` weighs the
    reply. Gradient replies are pseudo-gradients (see the module's docstring).
    """

    def __init__(self, model: nn.Module, step: Callable[[int], float], steps_per_epoch: int,
                 num_examples: int) -> None:
        self.model = model
        self.step = step
        self.steps_per_epoch = steps_per_epoch
        self.num_examples = num_examples

    def __call__(self, arrays: Arrays, first_step: int, num_steps: int,
                 instruction: TrainInstruction) -> Trained:
        from asyncfl.tasks.classification import load_arrays, state_to_arrays

        steps = num_steps or instruction.local_epochs * self.steps_per_epoch
        if steps < 1:
            raise ValueError(f"nothing to train: {num_steps} steps, {instruction.local_epochs} "
                             f"epochs of {self.steps_per_epoch} steps")
        load_arrays(self.model, arrays)
        self.model.train()
        losses = [float(self.step(first_step + i)) for i in range(steps)]
        return Trained(state_to_arrays(self.model), steps, math.fsum(losses) / steps,
                       self.num_examples)
