"""Image datasets from the Hugging Face hub, loaded with flwr-datasets.

They need the hub once; after that they load from the local cache, also offline
(`HF_DATASETS_OFFLINE=1`). Without network and cache, loading fails at once with a message
that says how to pre-cache them.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr_datasets import FederatedDataset

from asyncfl.tasks.classification import ClassificationTask
from asyncfl.tasks.models import model_factory
from asyncfl.tasks.partition import partition_indices

#: task name -> (hub dataset, image column, default model)
HUB_DATASETS = {
    "mnist": ("ylecun/mnist", "image", "mnist-cnn"),
    "fashion-mnist": ("zalando-datasets/fashion_mnist", "image", "mnist-cnn"),
    "cifar10": ("uoft-cs/cifar10", "img", "resnet18"),
}


class DatasetUnavailable(RuntimeError):
    """A hub dataset is neither reachable nor cached."""


def load_splits(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images as uint8 NHWC or NHW, labels) for the train and test splits."""
    dataset, column, _ = HUB_DATASETS[name]
    try:
        fds = FederatedDataset(dataset=dataset, partitioners={"train": 1})
        splits = {split: fds.load_split(split).with_format("numpy")
                  for split in ("train", "test")}
    except Exception as err:  # the hub client raises many kinds when offline
        raise DatasetUnavailable(
            f"task = {name} needs the '{dataset}' dataset from the Hugging Face hub, which "
            f"could not be loaded here ({type(err).__name__}: {err}). Pre-cache it on a machine "
            f"with network: python -c \"from flwr_datasets import FederatedDataset; "
            f"FederatedDataset(dataset='{dataset}', partitioners={{'train': 1}})"
            f".load_split('train')\", copy ~/.cache/huggingface to this machine, and run with "
            f"HF_DATASETS_OFFLINE=1; or use task = digits, which needs no download"
        ) from err
    return {split: (np.asarray(data[column]), np.asarray(data["label"]))
            for split, data in splits.items()}


def to_tensor(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 images -> standardized float32 NCHW."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return (x - torch.from_numpy(mean).view(1, -1, 1, 1)) / torch.from_numpy(std).view(1, -1, 1, 1)


def hub_task(name: str, num_clients: int, partition: str, *, model: str, alpha: float,
             classes_per_client: int, label_groups: int = 2,
             seed: int) -> ClassificationTask:
    """A hub image dataset, its train split partitioned with flwr-datasets partitioners."""
    splits = load_splits(name)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    pixels = x_train.astype(np.float32) / 255.0
    axes = (0, 1, 2) if pixels.ndim == 4 else None
    mean = np.atleast_1d(pixels.mean(axis=axes)).astype(np.float32)
    std = np.atleast_1d(pixels.std(axis=axes)).astype(np.float32)
    channels = 1 if x_train.ndim == 3 else x_train.shape[-1]
    factory = model_factory(HUB_DATASETS[name][2] if model == "auto" else model,
                            x_train.shape[1], channels)
    parts = partition_indices(y_train, num_clients, partition, alpha=alpha,
                              classes_per_client=classes_per_client,
                              label_groups=label_groups, seed=seed)
    return ClassificationTask(
        name, factory, to_tensor(x_train, mean, std), torch.from_numpy(y_train).long(),
        to_tensor(x_test, mean, std), torch.from_numpy(y_test).long(), parts,
    )
