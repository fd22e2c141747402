"""parallel-clients: clients trained together give the runs and replies of one-at-a-time
training, to float rounding.

Tolerance: |a - b| <= ATOL + RTOL * |a| on every weight of the final model (and every array
of a reply). Batched kernels sum in another order (about 1e-8 per step); where max-pooling
meets an exact tie (digits' blank background gives equal activations), a 1-ulp difference can
move a gradient to the neighbouring pixel, which is why the bound is 1e-4 rather than 1e-6.
"""

import csv

import numpy as np
import pytest
from flwr.app import ConfigRecord

import asyncfl
from asyncfl.client import task_update
from asyncfl.client_app import app, trained_from
from asyncfl.config import ConfigError, validate_run_config
from asyncfl.protocol import COMPUTE_TIME, arrays_to_record, record_to_arrays, train_instruction
from asyncfl.tasks import load_task
from asyncfl.tasks.base import TrainSettings
from asyncfl.tasks.batched import ClientJob, batching_problem, train_together
from asyncfl.tools.inline import InlineGrid

ATOL = 1e-4
RTOL = 1e-4
P = 8


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=RTOL, atol=ATOL, err_msg=key)


class RecordingGrid(InlineGrid):
    """Remembers how many tasks each vectorized computation trained."""

    batches: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingGrid.batches = self.together.batch_sizes if self.together else []


def losses(result) -> list[float]:
    with (result.output_dir / "events.csv").open() as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


RUNS = {  # a few short rounds or versions each; async ones keep 8 clients in flight
    "fedavg": dict(local_epochs=1),
    "fedsgd": {},
    "fedsgd-weights": {},
    "lsgd": dict(local_steps=3),
    "ssgd": {},
    "esync": dict(local_steps=3),
    "fedbuff": dict(local_steps=3, buffer_size=4, concurrency=8),
    "fedasync": dict(local_steps=3, concurrency=8),
    "asgd": dict(concurrency=8),
    "alsgd": dict(local_steps=3, concurrency=8),
    "ca2fl": dict(local_steps=3, buffer_size=4, concurrency=8),
    "fedstaleweight": dict(local_steps=3, buffer_size=4, concurrency=8),
    "fadas": dict(local_steps=3, buffer_size=4, concurrency=8),
}


@pytest.mark.parametrize("strategy", sorted(RUNS))
def test_p8_gives_the_p1_run(strategy, out):
    kw = dict(strategy=strategy, num_clients=10, num_server_rounds=4, seed=3, lr=0.1,
              partition="dirichlet", alpha=2.0, eval_every=1000, **RUNS[strategy], **out)
    one = asyncfl.simulate(run_name="p1", **kw)
    together = asyncfl.simulate(grid_class=RecordingGrid, parallel_clients=P, run_name="p8",
                                **kw)
    assert max(RecordingGrid.batches) > 1  # clients really were trained together
    assert max(RecordingGrid.batches) <= P
    assert_close(one.final_arrays(), together.final_arrays())
    np.testing.assert_allclose(losses(together), losses(one), rtol=RTOL, atol=ATOL)


def reply_of(start, outcome, settings):
    """The arrays a whole task replies (weights, delta or gradient sum)."""
    return task_update(start, trained_from(outcome), settings.returns, settings.lr)


@pytest.fixture(scope="module")
def digits():
    return lambda model: load_task(validate_run_config(
        {"num-clients": 20, "partition": "dirichlet", "alpha": 2.0, "model": model}))


@pytest.mark.parametrize("model", ["small-cnn", "mnist-cnn"])
def test_unequal_steps_batches_and_returns_match_task_train(digits, model):
    """Clients of different partition sizes (so different step counts and a smaller last
    minibatch), each return kind, different seeds and lrs: each outcome is task.train's."""
    task = digits(model)
    start = task.initial_arrays(1)
    kinds = ["weights", "delta", "gradient"]
    jobs = [ClientJob(start, c, TrainSettings(lr=0.05 * (1 + c % 3), local_epochs=1 + c % 2,
                                              batch_size=4, seed=c, returns=kinds[c % 3]))
            for c in range(6)]
    assert len({len(task.partitions[c]) for c in range(6)}) > 1
    for job, got in zip(jobs, train_together(task, jobs), strict=True):
        want = task.train(start, job.partition_id, job.settings)
        assert (got.steps, got.num_examples) == (want.steps, want.num_examples)
        assert got.train_loss == pytest.approx(want.train_loss, rel=RTOL, abs=ATOL)
        assert_close(reply_of(start, want, job.settings), reply_of(start, got, job.settings))


def test_the_lone_client_left_finishes_through_task_train(digits, monkeypatch):
    """ESync's shape: one client runs far more steps than the rest. Once it is alone it
    resumes through task.train (skip_steps), and every outcome is still task.train's."""
    task = digits("small-cnn")
    start = task.initial_arrays(2)
    jobs = [ClientJob(start, c, TrainSettings(lr=0.1, local_steps=steps, batch_size=5, seed=c,
                                              returns=kind))
            for c, (steps, kind) in enumerate([(2, "weights"), (25, "gradient"), (4, "delta")])]
    resumed = []
    plain_train = type(task).train

    def train(self, arrays, partition_id, settings):
        resumed.append((partition_id, settings.skip_steps, settings.local_steps))
        return plain_train(self, arrays, partition_id, settings)

    monkeypatch.setattr(type(task), "train", train)
    outcomes = train_together(task, jobs)
    assert resumed == [(1, 4, 21)]  # client 1, alone after the others' 4 steps
    monkeypatch.undo()
    for job, got in zip(jobs, outcomes, strict=True):
        want = task.train(start, job.partition_id, job.settings)
        assert (got.steps, got.num_examples) == (want.steps, want.num_examples)
        assert got.train_loss == pytest.approx(want.train_loss, rel=RTOL, abs=ATOL)
        assert_close(reply_of(start, want, job.settings), reply_of(start, got, job.settings))


def test_a_linear_model_matches_too():
    task = load_task(validate_run_config({"task": "synthetic", "num-clients": 6}))
    start = task.initial_arrays(0)
    jobs = [ClientJob(start, c, TrainSettings(lr=0.05, local_steps=2 + c, batch_size=5, seed=c))
            for c in range(6)]
    for job, got in zip(jobs, train_together(task, jobs), strict=True):
        assert_close(task.train(start, job.partition_id, job.settings).weights, got.weights)


def test_a_batched_reply_is_the_client_apps_reply():
    """Same record keys, metric keys and values (compute time aside) as the ClientApp's."""
    config = validate_run_config({"num-clients": 6, "parallel-clients": 4})
    grid = InlineGrid(app, config, 6)
    task = load_task(config)
    start = arrays_to_record(task.initial_arrays(0))
    settings = {"lr": 0.1, "local-steps": 2, "batch-size": 4, "task-seed": 7,
                "model-version": 3, "return": "delta"}

    def messages():
        return [train_instruction(start, ConfigRecord(settings), node, "3")
                for node in grid.get_node_ids()]

    together = list(grid.pull_messages(grid.push_messages(messages())))
    assert grid.together.batch_sizes == [4, 2]
    assert grid.together.report() == ("parallel-clients = 4: 6 tasks trained in 2 batches "
                                      "(3.0 tasks a batch); 0 computed ahead were never "
                                      "applied (in flight when the run ended)")
    for sent, got in zip(messages(), together, strict=True):
        want = app(sent, grid.contexts[sent.metadata.dst_node_id])
        assert got.content.keys() == want.content.keys()
        want_metrics, got_metrics = dict(want.content["metrics"]), dict(got.content["metrics"])
        assert want_metrics.keys() == got_metrics.keys()
        want_metrics.pop(COMPUTE_TIME)
        assert got_metrics.pop(COMPUTE_TIME) > 0
        assert got_metrics == pytest.approx(want_metrics, rel=RTOL, abs=ATOL)
        assert_close(record_to_arrays(want.content["arrays"]),
                     record_to_arrays(got.content["arrays"]))


@pytest.mark.parametrize("overrides, reason", [
    (dict(strategy="apsb", local_steps=2), "segments"),
    (dict(clock="wall"), "clock = virtual"),
    (dict(task="mean", strategy="running-mean"), "no torch model"),
    (dict(fault_fraction=0.5), "fault"),
])
def test_what_cannot_be_trained_together_is_refused_before_training(overrides, reason, out):
    with pytest.raises(ConfigError, match=f"parallel-clients.*{reason}"):
        asyncfl.simulate(parallel_clients=4, num_clients=4, **overrides, **out)


def test_batch_norm_is_refused_when_the_grid_is_built(out):
    with pytest.raises(ConfigError, match="parallel-clients.*batch norm"):
        asyncfl.simulate(parallel_clients=4, num_clients=4, model="small-cnn-bn", **out)
    task = load_task(validate_run_config({"num-clients": 4, "model": "small-cnn-bn"}))
    assert "running_mean" in batching_problem(task)


def test_cuda_without_a_gpu_fails_as_one_at_a_time_does(out):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA device"):
        asyncfl.simulate(parallel_clients=4, num_clients=4, torch_device="cuda", **out)


def test_a_batch_that_fails_falls_back_to_the_client_app_per_message():
    """One model of the wrong shape: that task gets the ClientApp's error reply, the others
    their normal replies, as with parallel-clients = 1."""
    config = validate_run_config({"num-clients": 3, "parallel-clients": 3})
    grid = InlineGrid(app, config, 3)
    good = load_task(config).initial_arrays(0)
    bad = {**good, "classifier.3.bias": np.zeros(11, dtype=np.float32)}
    settings = ConfigRecord({"lr": 0.1, "local-steps": 1, "batch-size": 4})
    messages = [train_instruction(arrays_to_record(arrays), settings, node, "0")
                for arrays, node in zip([good, bad, good], grid.get_node_ids(), strict=True)]
    replies = list(grid.pull_messages(grid.push_messages(messages)))
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "classifier.3.bias" in replies[1].error.reason
    assert grid.together.batch_sizes == []


AUTO_RUNS = ("fedavg", "fedbuff", "esync", "alsgd")


@pytest.mark.parametrize("strategy", AUTO_RUNS)
def test_auto_gives_the_p1_run(strategy, out):
    """parallel-clients = auto (the word, or 0) trains clients together where it can, with
    the P = 1 run's results to the same tolerance, and says which P it used."""
    kw = dict(strategy=strategy, num_clients=10, num_server_rounds=3, seed=5, lr=0.1,
              partition="dirichlet", alpha=2.0, eval_every=1000, **RUNS[strategy], **out)
    one = asyncfl.simulate(run_name="p1", **kw)
    auto = asyncfl.simulate(grid_class=RecordingGrid, parallel_clients="auto", run_name="auto",
                            **kw)
    assert auto.config["parallel-clients"] == 0
    assert max(RecordingGrid.batches) > 1
    assert auto.summary["parallel_clients"] == 10  # capped by the clients, not by memory
    assert auto.summary["parallel_clients_note"].startswith("parallel-clients = auto: up to 10")
    assert one.summary["parallel_clients"] == 1
    assert_close(one.final_arrays(), auto.final_arrays())
    np.testing.assert_allclose(losses(auto), losses(one), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("overrides, reason", [
    (dict(strategy="apsb", local_steps=2), "segments"),
    (dict(clock="wall", delay_dist="constant", delay_mean=1e-3), "clock = virtual"),
    (dict(task="mean", strategy="running-mean"), "no torch model"),
    (dict(fault_fraction=0.5), "fault"),
    (dict(model="small-cnn-bn"), "batch norm"),
])
def test_auto_falls_back_to_one_at_a_time_quietly(overrides, reason, out):
    """Where P > 1 is refused, auto runs one at a time instead and the summary says why."""
    result = asyncfl.simulate(grid_class=RecordingGrid, parallel_clients="auto", num_clients=4,
                              num_server_rounds=1, **overrides, **out)
    assert RecordingGrid.batches == []
    assert result.summary["parallel_clients"] == 1
    note = result.summary["parallel_clients_note"]
    assert note.startswith("parallel-clients = auto: one at a time") and reason in note


def test_auto_is_a_word_or_zero_and_nothing_else():
    assert validate_run_config({"parallel-clients": "auto"})["parallel-clients"] == 0
    assert validate_run_config({"parallel-clients": 0})["parallel-clients"] == 0
    with pytest.raises(ConfigError, match="parallel-clients.*type int"):
        validate_run_config({"parallel-clients": "many"})
    with pytest.raises(ConfigError, match="parallel-clients.*out of range"):
        validate_run_config({"parallel-clients": -1})


def test_auto_is_capped_by_memory(digits):
    """Half the free memory over each client's share, at most the clients and
    PARALLEL_AUTO_MAX; a fixed cap where free memory is unknown."""
    from asyncfl.config import PARALLEL_AUTO_MAX, PARALLEL_AUTO_NO_PSUTIL
    from asyncfl.tasks.batched import client_bytes
    from asyncfl.tools.together import auto_size

    task = digits("mnist-cnn")
    config = validate_run_config({"num-clients": 20, "model": "mnist-cnn", "batch-size": 10})
    each = client_bytes(task, 10)
    params = sum(p.numel() for p in task.model().parameters())
    assert 16 * params < each < 16 * params + 4 * 2 * 10 * 10_000  # + a few activations
    assert client_bytes(task, 100) > each  # activations grow with the batch
    assert auto_size(task, config, "cpu", free=2 * each * 7)[0] == 7
    assert auto_size(task, config, "cpu", free=each)[0] == 1
    assert auto_size(task, config, "cpu", free=2**50)[0] == 20  # the clients
    many = {**config, "num-clients": 10 * PARALLEL_AUTO_MAX}
    assert auto_size(task, many, "cpu", free=2**50)[0] == PARALLEL_AUTO_MAX
    size, why = auto_size(task, many, "cpu", free=None)
    if free_memory_known():
        assert "GiB free" in why
    else:
        assert size == PARALLEL_AUTO_NO_PSUTIL and "psutil" in why


def free_memory_known() -> bool:
    from asyncfl.tools.together import free_memory

    return free_memory("cpu") is not None
