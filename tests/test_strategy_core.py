"""Rules every strategy follows whatever its algorithm: dropped clients get no task, model
state that is not trained follows one rule, and the message contract lives in one module."""

import ast
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import asyncfl
from asyncfl.client_app import _faulty_clients
from asyncfl.config import BUFFERED_STRATEGIES
from asyncfl.engine.utils import task_seed
from asyncfl.protocol import GRADIENT, TRAIN, WEIGHTS
from asyncfl.strategies import STRATEGIES
from asyncfl.tasks import TrainSettings, load_task
from asyncfl.tools.inline import InlineGrid, random_node_ids
from tests.helpers import read_rows

PACKAGE = Path(asyncfl.__file__).parent
SYNC = ("fedsgd", "fedsgd-weights", "fedavg", "lsgd", "ssgd", "esync")


class TaskCountingGrid(InlineGrid):
    """Counts the train messages each node is sent."""

    sent: Counter = Counter()

    def push_messages(self, messages):
        messages = list(messages)
        TaskCountingGrid.sent.update(m.metadata.dst_node_id for m in messages
                                     if m.metadata.message_type.startswith(TRAIN))
        return super().push_messages(messages)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_dropped_client_is_sent_no_task_after_its_drop(out, strategy):
    TaskCountingGrid.sent = Counter()
    versions = 5 if strategy in SYNC else 30
    task = dict(task="mean") if strategy == "running-mean" else {}
    result = asyncfl.simulate(
        grid_class=TaskCountingGrid, strategy=strategy, num_clients=5, local_steps=2,
        batch_size=16, buffer_size=2, num_server_rounds=versions, fault_fraction=0.4,
        fault_kinds="raise", max_faults=2, run_name=strategy, **task, **out)
    faulty = set(_faulty_clients(0, 5, 0.4))
    assert set(result.summary["dropped_clients"]) == faulty
    # client c is the node with the c-th smallest id; each faulty client failed exactly twice,
    # then got nothing
    nodes = random_node_ids(5, result.config["seed"])
    assert {c: TaskCountingGrid.sent[nodes[c]] for c in faulty} == dict.fromkeys(faulty, 2)
    assert result.summary["skipped_by_reason"] == {"error reply": 4}
    assert result.summary["final_version"] == versions


def client_model(config: dict, client: int, steps: int) -> dict[str, np.ndarray]:
    """The model a client ends its first task with (started from version 0), trained here."""
    task = load_task(config)
    strategy = STRATEGIES[config["strategy"]]
    fixed = {k.replace("-", "_"): v for k, v in strategy.fixed_train_config.items()}
    settings = TrainSettings(**{"lr": config["lr"], "batch_size": config["batch-size"],
                                **fixed, "local_steps": steps,
                                "seed": task_seed(config["seed"], 0, client)})
    return task.train(task.initial_arrays(config["seed"]), client, settings).weights


BN = dict(task="digits", model="small-cnn-bn", local_steps=3, batch_size=16, lr=0.05)
STATISTICS = ("features.1.running_mean", "features.1.running_var",
              "features.5.running_mean", "features.5.running_var")


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"running-mean"}))
def test_batch_norm_statistics_of_one_client_become_the_global_ones(out, strategy):
    """Whatever the rule does to parameters (server lr 0.5, staleness, mixing), one client's
    update moves the statistics to exactly its own, and the counter by its steps."""
    extra = dict(server_lr=0.5, buffer_size=1) if strategy in BUFFERED_STRATEGIES else {}
    result = asyncfl.simulate(strategy=strategy, num_clients=1, num_server_rounds=1,
                              mixing=0.3, run_name=strategy, **BN, **extra, **out)
    (event,) = read_rows(result.output_dir / "events.csv")
    steps = int(event["steps"])
    final = result.final_arrays()
    expected = client_model(result.config, 0, steps)
    for key in STATISTICS:
        np.testing.assert_allclose(final[key], expected[key], rtol=1e-6, atol=1e-7)
    for key in ("features.1.num_batches_tracked", "features.5.num_batches_tracked"):
        assert final[key].dtype == np.int64 and int(final[key]) == steps


@pytest.mark.parametrize("strategy", ["fedavg", "lsgd", *BUFFERED_STRATEGIES])
def test_batch_norm_statistics_are_the_example_weighted_mean_of_the_clients(out, strategy):
    """Three clients from version 0 make version 1: the statistics are the example-weighted
    mean of theirs (the buffered rules' server lr 0.5, optimizers, caches and weights leave
    them alone) and the counter advances by exactly K."""
    result = asyncfl.simulate(strategy=strategy, num_clients=3, num_server_rounds=1,
                              partition="dirichlet", buffer_size=3, server_lr=0.5,
                              delay_dist="constant",
                              run_name=strategy, **BN, **out)
    task = load_task(result.config)
    sizes = np.array([task.partition_size(c) for c in range(3)], dtype=float)
    models = [client_model(result.config, c, BN["local_steps"]) for c in range(3)]
    final = result.final_arrays()
    for key in STATISTICS:
        mean = sum(w * m[key].astype(np.float64) for w, m in zip(sizes, models, strict=True))
        np.testing.assert_allclose(final[key], mean / sizes.sum(), rtol=1e-5, atol=1e-6)
    assert int(final["features.1.num_batches_tracked"]) == BN["local_steps"]


def test_gradient_replies_carry_the_change_of_the_statistics():
    task = load_task({**asyncfl.config.DEFAULTS, "num-clients": 4, **{k.replace("_", "-"): v
                                                     for k, v in BN.items()}})
    start = task.initial_arrays(0)
    settings = dict(lr=0.05, local_steps=2, batch_size=16, seed=7)
    weights = task.train(start, 0, TrainSettings(**settings, returns=WEIGHTS)).weights
    gradient = task.train(start, 0, TrainSettings(**settings, returns=GRADIENT)).gradient
    for key in (*STATISTICS, "features.1.num_batches_tracked"):
        np.testing.assert_array_equal(gradient[key], weights[key] - start[key])


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names}


def test_the_client_app_imports_no_strategy_or_timing_code():
    modules = imported_modules(PACKAGE / "client_app.py")
    assert not {m for m in modules if m.startswith(("asyncfl.strategies", "asyncfl.engine"))}


MESSAGE_KEYS = ("num-examples", "train-loss", "compute-time", "loss-sum", "model-version",
                "task-seed", "step-delay", "comm-delay", "segment-start", "segment-steps",
                "carry-state", "partition-id", "segment.gradient", "train.segment",
                "update-kind", "server-round")


def test_every_message_key_is_written_once_in_protocol():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        found = [key for key in MESSAGE_KEYS if re.search(rf"[\"']{re.escape(key)}[\"']", text)]
        if path.name == "protocol.py":
            assert sorted(found) == sorted(MESSAGE_KEYS)
        else:
            assert not found, f"{path.relative_to(PACKAGE)} spells {found} itself"
