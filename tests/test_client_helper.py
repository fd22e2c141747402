"""The public client helper (asyncfl.client): a quickstart-style torch ClientApp, written here
with its own model, data, momentum SGD and metric names, wrapped by the helper, trains with
every kind of strategy; APSB with K = 1 equals ASGD through it, bit for bit."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.datasets import load_digits
from torch import nn

import asyncfl.client
from asyncfl.client import (
    SEGMENT_MODEL,
    TorchTraining,
    Trained,
    TrainInstruction,
    handle_train,
    read_instruction,
    register,
)
from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.protocol import (
    BATCH_SIZE,
    CARRY_STATE,
    COMPUTE_TIME,
    DELTA,
    FINAL,
    GRADIENT,
    LOCAL_STEPS,
    LR,
    MODEL_VERSION,
    NUM_EXAMPLES,
    RETURN,
    SEGMENT,
    SEGMENT_START,
    SEGMENT_STEPS,
    STEPS,
    TASK_SEED,
    TRAIN,
    TRAIN_LOSS,
    UPDATE_KIND,
    WEIGHTS,
    arrays_to_record,
    pseudo_gradient,
    record_to_arrays,
    reply_kind,
)
from asyncfl.strategies import ALSGD, APSB, ASGD, Checkpointer, ESync, FedBuff
from asyncfl.tools.inline import InlineGrid
from tests.test_strategy_core import imported_modules

# ---- the user's side: data, model, a quickstart-style training with the helper -----------

_digits = load_digits()
X = torch.tensor(_digits.data / 16.0, dtype=torch.float32)
Y = torch.tensor(_digits.target, dtype=torch.long)
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = X[:1400], Y[:1400], X[1400:], Y[1400:]
NUM_NODES = 4
#: the clients' lr; gradient rules step by it (w -= lr * G adds each worker's displacement)
CLIENT_LR = 0.05


class Net(nn.Module):
    """The user's model: a small MLP with a batch norm (an integer buffer in its state)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                    nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared machine: one thread each is fastest (asyncfl's own tasks do so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def initial_model() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def partition(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    pid = int(context.node_config["partition-id"])
    return X_TRAIN[pid::NUM_NODES], Y_TRAIN[pid::NUM_NODES]


def make_app(momentum: float) -> ClientApp:
    """What a Flower user writes: a model, a per-step function with the optimizer on the
    instruction's lr, and one `register` call."""
    app = ClientApp()

    def training(context: Context, instruction: TrainInstruction) -> TorchTraining:
        x, y = partition(context)
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=instruction.lr, momentum=momentum)
        batch = instruction.batch_size or len(x)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(instruction.seed))

        def step(index: int) -> float:
            start = (index * batch) % len(x)
            rows = order[start:start + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            return loss.item()

        return TorchTraining(model, step, steps_per_epoch=math.ceil(len(x) / batch),
                             num_examples=len(x))

    register(app, training)

    @app.evaluate()
    def evaluate_here(msg: Message, context: Context) -> Message:
        x, y = partition(context)
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            correct = float((model(x).argmax(1) == y).float().mean())
        metrics = MetricRecord({"accuracy": correct, "num-examples": len(x)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def accuracy(arrays: ArrayRecord) -> float:
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    with torch.no_grad():
        return float((model(X_TEST).argmax(1) == Y_TEST).float().mean())


def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
    return MetricRecord({"accuracy": accuracy(arrays)})


class RecordingGrid(InlineGrid):
    """Keeps every instruction and its reply."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[tuple[Message, Message]] = []

    def _execute(self, message: Message) -> Message | None:
        reply = super()._execute(message)
        assert reply is not None and not reply.has_error(), reply.error if reply else None
        if message.metadata.message_type.startswith("train"):
            self.exchanges.append((message, reply))
        return reply


def run(strategy, versions: int, momentum: float = 0.9, **train_config):
    grid = RecordingGrid(make_app(momentum), {}, NUM_NODES)
    config = ConfigRecord({LR: CLIENT_LR, BATCH_SIZE: 32, **train_config})
    result = strategy.start(grid, initial_model(), num_rounds=versions, train_config=config,
                            evaluate_fn=evaluate)
    return grid, result


def virtual(**kw) -> dict:
    return dict(clock=VirtualClock(), delays=DelayModel(np.array([1.0, 1.6, 2.5, 4.1])),
                seed=5, **kw)


def learned(result) -> float:
    evals = result.evaluate_metrics_serverapp
    first, last = evals[min(evals)]["accuracy"], evals[max(evals)]["accuracy"]
    assert last > first + 0.3, (first, last)
    return last


# ---- strategies through the helper ---------------------------------------------------------

def test_apsb_trains_with_segments_and_mid_task_adoption():
    grid, result = run(APSB(server_lr=1.0, concurrency=NUM_NODES, **virtual()), versions=30,
                       **{LOCAL_STEPS: 4})
    segments = [(m, r) for m, r in grid.exchanges if m.metadata.message_type == SEGMENT]
    assert len(segments) == len(grid.exchanges)
    adopted = [m for m, _ in segments if m.content["config"][SEGMENT_START] > 0
               and any(isinstance(r, ArrayRecord) for r in m.content.values())]
    assert adopted, "no worker adopted a broadcast mid-task"
    finals = [r for m, r in segments if m.content["config"][FINAL]]
    assert all(r.content["metrics"][STEPS] == 4 for r in finals)
    assert all(reply_kind(r.content["metrics"]) == GRADIENT for r in finals)
    learned(result)


def test_apsb_carrying_its_state_in_the_messages_gives_the_same_model(tmp_path):
    """Runs that checkpoint keep a segmented task's state in the messages, not in the node."""
    finals = []
    for checkpoints in (None, Checkpointer(tmp_path / "ckpt", every=5)):
        grid, result = run(APSB(server_lr=1.0, concurrency=NUM_NODES,
                                checkpoints=checkpoints, **virtual()),
                           versions=8, **{LOCAL_STEPS: 4})
        finals.append(result.arrays.to_numpy_ndarrays())
    assert any(m.content["config"].get(CARRY_STATE) for m, _ in grid.exchanges)
    assert all(np.array_equal(a, b) for a, b in zip(*finals, strict=True))


def test_esync_replies_run_the_steps_the_state_server_assigned():
    strategy = ESync(server_lr=1.0, **virtual())
    grid, result = run(strategy, versions=5, **{LOCAL_STEPS: 1})
    assigned = [row["steps"] for row in strategy.recorder.tables["esync_state"]]
    sent = [m.content["config"][LOCAL_STEPS] for m, _ in grid.exchanges]
    ran = [r.content["metrics"][STEPS] for _, r in grid.exchanges]
    assert sorted(sent) == sorted(assigned) and ran == sent
    assert len(set(ran)) > 1  # unequal speeds, unequal step counts
    assert all(r.content["metrics"][COMPUTE_TIME] > 0 for _, r in grid.exchanges)
    learned(result)


@pytest.mark.parametrize("local_steps", [1, 3])
def test_esync_gives_the_slowest_worker_of_each_round_the_runs_local_steps(local_steps):
    """K = train_config's local-steps: the slowest worker of a round runs exactly K, every
    other at least K (its K steps end no later)."""
    strategy = ESync(**virtual())
    run(strategy, versions=4, **{LOCAL_STEPS: local_steps})
    rounds: dict[int, list[int]] = {}
    for row in strategy.recorder.tables["esync_state"]:
        rounds.setdefault(row["round"], []).append(row["steps"])
    assert len(rounds) == 4
    assert all(min(steps) == local_steps for steps in rounds.values()), rounds
    assert any(max(steps) > local_steps for steps in rounds.values()), rounds


def test_fedbuff_with_delta_replies_trains():
    grid, result = run(FedBuff(buffer_size=2, concurrency=3, client_returns=DELTA, **virtual()),
                       versions=20, **{LOCAL_STEPS: 5})
    assert {reply_kind(r.content["metrics"]) for _, r in grid.exchanges} == {DELTA}
    learned(result)


@pytest.mark.parametrize("strategy", [ALSGD, ASGD])
def test_gradient_strategies_train_on_pseudo_gradients(strategy):
    grid, result = run(strategy(server_lr=1.0, concurrency=NUM_NODES, **virtual()),
                       versions=40, **{LOCAL_STEPS: 3})
    assert {reply_kind(r.content["metrics"]) for _, r in grid.exchanges} == {GRADIENT}
    learned(result)


def test_apsb_with_k1_equals_asgd_through_the_helper():
    finals = {}
    for name, strategy in (("apsb", APSB(server_lr=1.0, concurrency=3, **virtual())),
                           ("asgd", ASGD(server_lr=1.0, concurrency=3, **virtual()))):
        _, result = run(strategy, versions=25, momentum=0.0, **{LOCAL_STEPS: 1})
        finals[name] = result.arrays.to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(*finals.values(), strict=True))


# ---- the helper's parts ------------------------------------------------------------------

def instruction_message(arrays: dict | None, message_type: str = TRAIN, **config) -> Message:
    content = RecordDict({"settings": ConfigRecord({LR: 0.1, **config})})
    if arrays is not None:
        content["model"] = arrays_to_record(arrays)
    return Message(content, dst_node_id=100, message_type=message_type)


def test_read_instruction_finds_records_by_type_and_reads_every_field():
    model = {"w": np.ones(3, dtype=np.float32)}
    parsed = read_instruction(instruction_message(
        model, **{LOCAL_STEPS: 4, BATCH_SIZE: 8, RETURN: DELTA, TASK_SEED: 11,
                  MODEL_VERSION: 7, "my-key": "mine"}))
    assert parsed.arrays is not None and parsed.arrays["w"].tolist() == [1.0, 1.0, 1.0]
    assert (parsed.lr, parsed.local_steps, parsed.batch_size, parsed.returns, parsed.seed,
            parsed.model_version, parsed.segment) == (0.1, 4, 8, DELTA, 11, 7, False)
    assert parsed.config["my-key"] == "mine"
    segment = read_instruction(instruction_message(
        None, SEGMENT, **{SEGMENT_START: 2, SEGMENT_STEPS: 3, FINAL: False, CARRY_STATE: True}))
    assert segment.arrays is None and segment.returns == GRADIENT
    assert (segment.segment, segment.segment_start, segment.segment_steps, segment.final,
            segment.carry_state) == (True, 2, 3, False, True)
    with pytest.raises(ValueError, match="must carry the model"):
        read_instruction(instruction_message(None))


def one_step_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TorchTraining:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(index: int) -> float:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return TorchTraining(model, step, steps_per_epoch=1, num_examples=len(x))


def node_context() -> Context:
    return Context(run_id=1, node_id=100, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config={})


def test_reply_kinds_are_consistent_for_one_plain_sgd_step():
    torch.manual_seed(1)
    model, x, y = nn.Linear(4, 2), torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    training = one_step_training(model, x, y)
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    replies = {}
    for kind in (WEIGHTS, DELTA, GRADIENT):
        reply = handle_train(instruction_message(start, **{LOCAL_STEPS: 1, RETURN: kind}),
                             node_context(), training)
        metrics = reply.content["metrics"]
        assert reply_kind(metrics) == kind and (UPDATE_KIND in metrics) == (kind != WEIGHTS)
        assert (metrics[NUM_EXAMPLES], metrics[STEPS]) == (6, 1) and metrics[TRAIN_LOSS] > 0
        replies[kind] = record_to_arrays(reply.content["arrays"])
    # the same step every time (the model is reloaded from `start`)
    weights, delta, gradient = replies[WEIGHTS], replies[DELTA], replies[GRADIENT]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()})
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for key, parameter in model.named_parameters():
        np.testing.assert_array_equal(delta[key], weights[key] - start[key])
        np.testing.assert_array_equal(gradient[key], (start[key] - weights[key]) / 0.1)
        np.testing.assert_allclose(gradient[key], parameter.grad.numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_pseudo_gradient_of_untrained_state_is_its_change():
    start = {"w": np.array([1.0], np.float32), "bn.running_mean": np.array([0.5], np.float32),
             "bn.num_batches_tracked": np.array(3)}
    end = {"w": np.array([0.8], np.float32), "bn.running_mean": np.array([0.7], np.float32),
           "bn.num_batches_tracked": np.array(5)}
    gradient = pseudo_gradient(start, end, 0.1)
    assert gradient["w"].dtype == np.float32 and gradient["w"][0] == pytest.approx(2.0)
    assert gradient["bn.running_mean"][0] == pytest.approx(0.2)
    assert gradient["bn.num_batches_tracked"] == 2
    with pytest.raises(ValueError, match="learning rate"):
        pseudo_gradient(start, end, None)


def test_segments_keep_the_gradient_and_adopt_a_new_model():
    """Two segments of a 2-step task: the second adopts a new model, the gradient sum goes on,
    and the user's own metrics reach the reply."""
    calls = []

    def training(arrays, first_step, num_steps, instruction):
        calls.append((float(arrays["w"][0]), first_step, num_steps))
        return Trained({"w": arrays["w"] - 0.5}, num_steps, 1.0, 10,
                       metrics={"my-metric": 3.0})

    context, w = node_context(), {"w": np.array([4.0])}
    config = {SEGMENT_STEPS: 1, MODEL_VERSION: 2}
    first = handle_train(instruction_message(w, SEGMENT, **config, **{SEGMENT_START: 0,
                                                                     FINAL: False}),
                         context, training)
    assert "arrays" not in first.content and SEGMENT_MODEL in context.state
    last = handle_train(instruction_message({"w": np.array([9.0])}, SEGMENT, **config,
                                            **{SEGMENT_START: 1, FINAL: True}),
                        context, training)
    assert calls == [(4.0, 0, 1), (9.0, 1, 1)]
    assert record_to_arrays(last.content["arrays"])["w"].tolist() == [10.0]  # 0.5/0.1 twice
    metrics = last.content["metrics"]
    assert (metrics[STEPS], metrics[MODEL_VERSION], metrics["my-metric"]) == (2, 2, 3.0)
    assert SEGMENT_MODEL not in context.state


def test_the_helper_imports_no_strategy_timing_or_runtime_code():
    modules = imported_modules(Path(asyncfl.client.__file__))
    assert not {m for m in modules
                if m.startswith(("asyncfl.strategies", "asyncfl.engine", "asyncfl.tools"))}


def client_app_page_blocks() -> list[str]:
    """The python blocks of docs/client-app.md ("Your own ClientApp")."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "client-app.md").read_text()
    return re.findall(r"```python\n(.*?)```", page, re.S)


@pytest.mark.parametrize("strategy", ["APSB", "ESync"])
def test_the_docs_client_app_trains_with_apsb_and_esync(strategy):
    """docs/client-app.md's two blocks as they are, but 4 nodes at simulated speeds and 20
    versions."""
    client_code, server_code = client_app_page_blocks()
    user: dict = {}
    exec(client_code, user)
    line = server_code.split("\n")[0]
    server_code = server_code.replace(line, f"strategy = {strategy}(**options)").replace(
        "num_rounds=200", "num_rounds=20")
    options = virtual(server_lr=1.0, concurrency=NUM_NODES) if strategy == "APSB" else virtual()
    namespace = {**user, "grid": InlineGrid(user["app"], {}, NUM_NODES), "APSB": APSB,
                 "ESync": ESync, "ArrayRecord": ArrayRecord, "ConfigRecord": ConfigRecord,
                 "options": options}
    torch.manual_seed(0)
    initial = user["Net"]()
    torch.manual_seed(0)
    exec(server_code, namespace)
    final = user["Net"]()
    final.load_state_dict(namespace["result"].arrays.to_torch_state_dict())
    with torch.no_grad():
        correct = [(m(user["X"]).argmax(1) == user["Y"]).float().mean() for m in (initial, final)]
    assert correct[1] > correct[0] + 0.3, correct


def test_the_helper_reports_examples_under_the_strategys_weight_key():
    """A strategy weighted by its own metric name (`weighted_by_key="n"`) trains with the
    helper: the instruction names the key and every reply carries it."""
    strategy = FedBuff(buffer_size=2, concurrency=NUM_NODES, weighted_by_key="n",
                       server_lr=1.0, **virtual())
    grid, result = run(strategy, versions=20, **{LOCAL_STEPS: 3})
    assert all(r.content["metrics"]["n"] == r.content["metrics"]["num-examples"] > 0
               for _, r in grid.exchanges)
    assert not strategy.recorder.failures
    learned(result)
