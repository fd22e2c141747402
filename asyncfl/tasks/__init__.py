"""Tasks: model + data + local training and evaluation (no strategy imports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from asyncfl.tasks.base import MODEL_CALLABLE, Task, TrainOutcome, TrainSettings

if TYPE_CHECKING:  # images imports datasets and PIL: only image tasks pay for them
    from asyncfl.tasks.images import ImageSource

#: the preset image tasks (task = images on a fixed hub dataset and model)
PRESET_NAMES = ("mnist", "fashion-mnist", "cifar10")
#: tasks whose data are images of a data set the user picks or a preset names
IMAGE_TASKS = ("images", *PRESET_NAMES)
TASK_NAMES = ("digits", "mean", "synthetic", *IMAGE_TASKS)
#: the tasks that train a torch model (the others have no `model` to choose)
MODEL_TASKS = ("digits", *IMAGE_TASKS)
#: `model` names of the built-in models (tasks/models.py), besides "auto"
BUILTIN_MODEL_NAMES = ("small-cnn", "small-cnn-bn", "mnist-cnn", "resnet18")


@dataclass(frozen=True)
class TaskSpec:
    """The run-config settings a task is built from (the key of the per-process cache)."""

    name: str
    num_clients: int
    partition: str
    model: str
    alpha: float
    classes_per_client: int
    label_groups: int
    synthetic_beta: float
    seed: int
    dataset: str
    image_column: str
    label_column: str
    test_fraction: float

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TaskSpec:
        """The spec of a validated run config."""
        return cls(config["task"], config["num-clients"], config["partition"], config["model"],
                   float(config["alpha"]), config["classes-per-client"], config["label-groups"],
                   float(config["synthetic-beta"]), config["seed"], config["dataset"],
                   config["image-column"], config["label-column"],
                   float(config["test-fraction"]))

    def image_source(self) -> ImageSource:
        """Where an image task's data comes from: the preset's hub dataset or `dataset`."""
        from asyncfl.tasks.images import PRESETS, ImageSource

        dataset = PRESETS[self.name].dataset if self.name in PRESETS else self.dataset
        return ImageSource(dataset, self.image_column, self.label_column)


@lru_cache(maxsize=4)
def _build(spec: TaskSpec) -> Task:
    split = dict(alpha=spec.alpha, classes_per_client=spec.classes_per_client,
                 label_groups=spec.label_groups, seed=spec.seed, model=spec.model)
    if spec.name == "digits":
        from asyncfl.tasks.digits import digits_task

        return digits_task(spec.num_clients, spec.partition, **split)
    if spec.name == "mean":
        from asyncfl.tasks.mean import MeanTask

        return MeanTask(spec.num_clients, spec.seed)
    if spec.name == "synthetic":
        from asyncfl.tasks.synthetic import synthetic_task

        return synthetic_task(spec.num_clients, alpha=spec.alpha, beta=spec.synthetic_beta,
                              seed=spec.seed)
    if spec.name in IMAGE_TASKS:
        from asyncfl.tasks.images import image_task

        return image_task(spec.name, spec.image_source(), spec.num_clients, spec.partition,
                          test_fraction=spec.test_fraction, **split)
    raise ValueError(f"unknown task {spec.name!r}; choose one of {TASK_NAMES}")


def load_task(config: Mapping[str, Any]) -> Task:
    """The task a validated run config describes (built once per process and reused).

    num-clients must be resolved first (0 means "every node", which only the ServerApp's Grid
    or the node's num-partitions can tell)."""
    if config["num-clients"] < 1:
        raise ValueError("load_task needs num-clients >= 1; resolve num-clients = 0 to the "
                         "number of nodes first")
    return _build(TaskSpec.of(config))


def check_task(config: Mapping[str, Any]) -> None:
    """Load the task's data and check its model now, so that a missing dataset, a wrong
    column, unusable labels, a model that does not fit or too few examples for num-clients
    stop a run before any node is contacted. With num-clients = 0 (the node count is not
    known yet) data and model are checked on one client, the split once the nodes are
    counted."""
    if config["num-clients"] > 0:
        load_task(config)
    else:
        load_task({**config, "num-clients": 1, "partition": "iid"})


__all__ = ["BUILTIN_MODEL_NAMES", "IMAGE_TASKS", "MODEL_CALLABLE", "MODEL_TASKS", "TASK_NAMES",
           "Task", "TaskSpec", "TrainOutcome", "TrainSettings",
           "check_task", "load_task"]
