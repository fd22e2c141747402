"""Split a labelled training set over clients with flwr-datasets' partitioners."""

from __future__ import annotations

import warnings

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

SCHEMES = ("iid", "dirichlet", "pathological", "shard", "label-skew")


def label_skew_indices(
    labels: np.ndarray, num_partitions: int, groups: int, seed: int
) -> list[np.ndarray]:
    """Disjoint class groups: classes are cut into `groups` contiguous groups, client i holds
    group i % groups, and a group's examples are shuffled and split evenly among its clients.
    With 2 clients and 2 groups, client 0 holds the lower half of the classes and client 1
    the upper half; which client is fast is set separately (delay-profile)."""
    classes = np.unique(labels)
    if not 1 <= groups <= min(len(classes), num_partitions):
        raise ValueError(f"label-groups = {groups} must be between 1 and min(classes = "
                         f"{len(classes)}, num-clients = {num_partitions})")
    group_of_class = {int(c): g for g, part in enumerate(np.array_split(classes, groups))
                      for c in part}
    example_group = np.array([group_of_class[int(y)] for y in labels])
    rng = np.random.default_rng([seed, 6])
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_partitions
    for g in range(groups):
        members = list(range(g, num_partitions, groups))
        indices = rng.permutation(np.flatnonzero(example_group == g))
        for client, chunk in zip(members, np.array_split(indices, len(members)), strict=True):
            parts[client] = np.sort(chunk)
    return parts


def make_partitioner(
    scheme: str, num_partitions: int, *, alpha: float, classes_per_client: int, seed: int,
    num_examples: int,
) -> Partitioner:
    """The flwr-datasets partitioner for a run-config `partition` scheme."""
    if scheme == "iid":
        return IidPartitioner(num_partitions)
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions, partition_by="label", alpha=alpha, seed=seed,
            min_partition_size=min(10, max(1, num_examples // (2 * num_partitions))),
        )
    if scheme == "pathological":
        return PathologicalPartitioner(
            num_partitions, partition_by="label", num_classes_per_partition=classes_per_client,
            class_assignment_mode="deterministic", seed=seed,
        )
    if scheme == "shard":
        # McMahan et al.'s non-IID split: sort by label, cut into equal shards, deal each
        # client `classes_per_client` of them (a client sees about that many classes)
        if num_examples < num_partitions * classes_per_client:
            raise ValueError(
                f"partition = shard with num-clients = {num_partitions} and "
                f"classes-per-client = {classes_per_client} needs at least "
                f"{num_partitions * classes_per_client} training examples (one per shard); "
                f"the task has {num_examples}"
            )
        return ShardPartitioner(
            num_partitions, partition_by="label", num_shards_per_partition=classes_per_client,
            seed=seed,
        )
    raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {SCHEMES}")


def iid_indices(num_examples: int, num_partitions: int) -> list[np.ndarray]:
    """The contiguous blocks flwr-datasets' `IidPartitioner` gives (its `load_partition` is
    `Dataset.shard(contiguous=True)`: the first `num_examples % num_partitions` blocks one
    longer, as `np.array_split` cuts them), computed without a Dataset per partition: that
    costs about 2 ms each, over three minutes of setup at 100,000 clients. Tested equal to
    the partitioner's."""
    return np.array_split(np.arange(num_examples), num_partitions)


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: str, *, alpha: float = 0.5,
    classes_per_client: int = 2, label_groups: int = 2, seed: int = 0,
) -> list[np.ndarray]:
    """Indices into `labels` held by each client; every client gets at least one example."""
    if num_partitions > len(labels):
        raise ValueError(
            f"num-clients = {num_partitions} exceeds the {len(labels)} training examples"
        )
    if scheme == "label-skew":
        parts = label_skew_indices(labels, num_partitions, label_groups, seed)
    elif scheme == "iid":
        parts = iid_indices(len(labels), num_partitions)
    else:
        partitioner = make_partitioner(
            scheme, num_partitions, alpha=alpha, classes_per_client=classes_per_client,
            seed=seed, num_examples=len(labels),
        )
        partitioner.dataset = Dataset.from_dict(
            {"index": np.arange(len(labels)), "label": labels.astype(np.int64)}
        )
        try:
            with warnings.catch_warnings():  # pyarrow's deprecation notice in flwr-datasets
                warnings.simplefilter("ignore", FutureWarning)
                parts = [np.asarray(partitioner.load_partition(i)["index"])
                         for i in range(num_partitions)]
        except ValueError as err:  # flwr-datasets' words, with our settings named first
            setting = (f"alpha = {alpha}" if scheme == "dirichlet"
                       else f"classes-per-client = {classes_per_client}")
            raise ValueError(f"partition = {scheme} with num-clients = {num_partitions} and "
                             f"{setting} cannot split {len(labels)} examples: {err}") from err
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise ValueError(
            f"partition = {scheme} leaves {len(empty)} of {num_partitions} clients without data "
            f"(e.g. client {empty[0]}); use fewer clients or another partition"
        )
    return parts
