"""Tasks: model + data + local training and evaluation (no strategy imports)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from asyncfl.tasks.base import Task, TrainOutcome, TrainSettings

TASK_NAMES = ("digits", "mean", "synthetic", "mnist", "fashion-mnist", "cifar10")


@lru_cache(maxsize=4)
def _build(name: str, num_clients: int, partition: str, model: str, alpha: float,
           classes_per_client: int, label_groups: int, synthetic_beta: float,
           seed: int) -> Task:
    split = dict(alpha=alpha, classes_per_client=classes_per_client, label_groups=label_groups,
                 seed=seed, model=model)
    if name == "digits":
        from asyncfl.tasks.digits import digits_task

        return digits_task(num_clients, partition, **split)
    if name == "mean":
        from asyncfl.tasks.mean import MeanTask

        return MeanTask(num_clients, seed)
    if name == "synthetic":
        from asyncfl.tasks.synthetic import synthetic_task

        return synthetic_task(num_clients, alpha=alpha, beta=synthetic_beta, seed=seed)
    from asyncfl.tasks.hub import HUB_DATASETS, hub_task

    if name in HUB_DATASETS:
        return hub_task(name, num_clients, partition, **split)
    raise ValueError(f"unknown task {name!r}; choose one of {TASK_NAMES}")


def load_task(config: Mapping[str, Any]) -> Task:
    """The task a validated run config describes (built once per process and reused).

    num-clients must be resolved first (0 means "every node", which only the ServerApp's Grid
    or the node's num-partitions can tell)."""
    if config["num-clients"] < 1:
        raise ValueError("load_task needs num-clients >= 1; resolve num-clients = 0 to the "
                         "number of nodes first")
    return _build(config["task"], config["num-clients"], config["partition"], config["model"],
                  float(config["alpha"]), config["classes-per-client"], config["label-groups"],
                  float(config["synthetic-beta"]), config["seed"])


__all__ = ["TASK_NAMES", "Task", "TrainOutcome", "TrainSettings", "load_task"]
