"""Tasks: partitions, the built-in models, the offline error, devices, evaluation."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import asyncfl
from asyncfl.config import validate_run_config
from asyncfl.tasks import BUILTIN_MODEL_NAMES, load_task
from asyncfl.tasks.base import resolve_device
from asyncfl.tasks.models import (
    BUILTIN_MODELS,
    MnistCNN,
    ModelError,
    SmallCNN,
    fitted_factory,
    resnet18_32x32,
)
from asyncfl.tasks.partition import SCHEMES, partition_indices
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows

# 10 balanced classes of 100, shuffled
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_partition_deals_each_example_to_exactly_one_client(scheme):
    parts = partition_indices(LABELS, 20, scheme, seed=1)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize(("examples", "clients"), [(1000, 20), (1000, 7), (1003, 1000),
                                                   (1000, 1), (1000, 1000)])
def test_iid_blocks_are_those_of_flower_datasets_iid_partitioner(examples, clients):
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(clients)
    partitioner.dataset = Dataset.from_dict({"index": np.arange(examples)})
    theirs = [np.asarray(partitioner.load_partition(i)["index"]) for i in range(clients)]
    ours = partition_indices(np.zeros(examples, dtype=int), clients, "iid")
    assert len(ours) == clients
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_impossible_splits_are_refused_naming_the_settings():
    with pytest.raises(ValueError, match="needs at least 1200 training examples"):
        partition_indices(LABELS, 400, "shard", classes_per_client=3, seed=1)
    with pytest.raises(ValueError, match="partition = pathological with num-clients = 5 and "
                                         "classes-per-client = 20 cannot split 1000 examples"):
        partition_indices(LABELS, 5, "pathological", classes_per_client=20, seed=1)


def test_shard_partition_gives_each_client_its_shards_of_label_sorted_data():
    # 20 clients x 2 shards of 25 examples: with 100 examples per class no shard straddles two
    # classes, so every client holds exactly 2 x 25 examples of at most 2 classes
    parts = partition_indices(LABELS, 20, "shard", classes_per_client=2, seed=1)
    for part in parts:
        counts = np.bincount(LABELS[part], minlength=10)
        assert len(part) == 50 and set(counts[counts > 0]) <= {25, 50}
    other_seed = partition_indices(LABELS, 20, "shard", classes_per_client=2, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other_seed, strict=True))


def test_built_in_models_fit_any_image_size_and_channels():
    assert MnistCNN((1, 28, 28))(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert MnistCNN((1, 8, 8))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # larger images are pooled to 7x7: the fully connected layer stays MNIST's
    big = MnistCNN((3, 96, 64), 4)
    assert big(torch.zeros(2, 3, 96, 64)).shape == (2, 4)
    assert big.classifier[1].in_features == 64 * 7 * 7
    assert resnet18_32x32((3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert resnet18_32x32((1, 28, 28), 5)(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert SmallCNN((2, 12, 16), 3)(torch.zeros(2, 2, 12, 16)).shape == (2, 3)
    assert set(BUILTIN_MODELS) == set(BUILTIN_MODEL_NAMES)


def test_the_fit_check_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fitted_factory("mnist-cnn", torch.zeros(2, 1, 8, 8), 10)
    assert torch.equal(torch.rand(3), expected)


def test_a_model_that_does_not_fit_is_refused_naming_the_setting():
    with pytest.raises(ModelError, match="'model' = 'small-cnn' on 1x2x2 inputs"):
        fitted_factory("small-cnn", torch.zeros(2, 1, 2, 2), 10)


def test_mnist_cnn_also_runs_on_digits(tmp_path):
    import asyncfl

    result = asyncfl.simulate(task="digits", model="mnist-cnn", num_clients=2,
                              num_server_rounds=1, local_steps=2, output_dir=str(tmp_path),
                              run_name="mnist-cnn-digits")
    assert 0.0 <= result.summary["accuracy"] <= 1.0
    assert "features.0.weight" in result.final_arrays()


def test_an_uncached_hub_dataset_fails_fast_with_instructions():
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    code = ("import asyncfl\n"
            "asyncfl.simulate(task='mnist', num_clients=2, num_server_rounds=1)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "DatasetUnavailable" in done.stderr
    assert "Pre-cache it on a machine with network" in done.stderr
    assert "task = digits" in done.stderr


@pytest.fixture
def no_gpu(monkeypatch):
    """This process sees no CUDA device (whatever the machine has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolve_device.cache_clear()
    yield
    resolve_device.cache_clear()


def test_torch_device_auto_falls_back_to_cpu_and_cuda_without_a_gpu_is_refused(no_gpu):
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="torch-device = 'cuda', but this process sees no CUDA"):
        resolve_device("cuda")


def test_torch_device_auto_picks_the_gpu_where_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resolve_device.cache_clear()
    try:
        assert resolve_device("auto") == "cuda"
    finally:
        resolve_device.cache_clear()


def test_a_node_told_to_train_on_a_missing_gpu_fails_its_tasks_and_the_run_goes_on(no_gpu, out):
    class GpuNodeGrid(InlineGrid):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.contexts[min(self.contexts)].node_config["torch-device"] = "cuda"

    result = asyncfl.simulate(grid_class=GpuNodeGrid, num_clients=3, num_server_rounds=2,
                              local_steps=2, max_faults=0, run_name="gpu-node", **out)
    events = read_rows(result.output_dir / "events.csv")
    failed = [r for r in events if r["rejected"]]
    assert [r["client"] for r in failed] == ["0", "0"]
    assert "ValueError: torch-device = 'cuda'" in failed[0]["rejected"]
    assert sorted(r["client"] for r in events if not r["rejected"]) == ["1", "1", "2", "2"]


def test_evaluation_in_batches_equals_evaluation_in_one_go():
    task = load_task(validate_run_config({"num-clients": 2}))
    arrays = task.initial_arrays(3)
    whole = task.evaluate(arrays)
    task.eval_batch = 7  # 360 test images: 51 full batches and a remainder of 3
    try:
        batched = task.evaluate(arrays)
    finally:
        del task.eval_batch
    assert {k: v for k, v in batched.items() if k != "loss"} == {
        k: v for k, v in whole.items() if k != "loss"}
    assert batched["loss"] == pytest.approx(whole["loss"], rel=1e-6)
