"""What a task is: a model, partitioned data, local training and evaluation."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: what a `model` setting naming the user's own model looks like: "module:callable"
MODEL_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

RETURN_KINDS = ("weights", "delta", "gradient")
DEVICES = ("cpu", "cuda", "auto")


@lru_cache(maxsize=8)
def resolve_device(name: str) -> str:
    """The torch device a `torch-device` setting stands for in this process: `auto` is cuda
    where this process sees a GPU, else cpu; `cuda` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"torch-device = {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cpu":  # a task without torch (mean) never imports it
        return name
    import torch

    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ValueError("torch-device = 'cuda', but this process sees no CUDA device "
                         "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    if name == "auto":
        return "cuda" if cuda else "cpu"
    return name


@dataclass(frozen=True)
class TrainSettings:
    """How a client trains one task (sent by the server in the train config).

    `skip_steps` resumes a task part-way: the minibatch sequence is the one the whole task
    would use (fixed by `seed`), and the first `skip_steps` batches of it are passed over;
    `local_steps` then counts the steps to run from there.
    """

    lr: float
    local_epochs: int = 1
    local_steps: int = 0  # 0: run local_epochs epochs instead
    batch_size: int = 0  # 0: the whole partition in one batch
    returns: str = "weights"  # weights | delta | gradient (sum of the step gradients)
    seed: int = 0  # minibatch shuffling
    skip_steps: int = 0
    threads: int = 1  # torch threads for local training
    device: str = "cpu"  # torch device, already resolved (see resolve_device)

    def __post_init__(self) -> None:
        if self.returns not in RETURN_KINDS:
            raise ValueError(f"'return' must be one of {RETURN_KINDS}, got {self.returns!r}")


@dataclass
class TrainOutcome:
    """What local training produced: the local model after the last step and, when the
    settings ask for gradients, the sum of the step gradients."""

    weights: dict[str, np.ndarray]
    gradient: dict[str, np.ndarray] | None
    num_examples: int
    train_loss: float
    steps: int


class Task(ABC):
    """A model with partitioned training data and a held-out test set."""

    name: str
    num_partitions: int

    @abstractmethod
    def initial_arrays(self, seed: int) -> dict[str, np.ndarray]:
        """The initial global model, reproducible from the seed."""

    @abstractmethod
    def partition_size(self, partition_id: int) -> int:
        """Training examples held by one client."""

    @abstractmethod
    def train(
        self, arrays: dict[str, np.ndarray], partition_id: int, settings: TrainSettings
    ) -> TrainOutcome:
        """Local training of one client from the given model."""

    @abstractmethod
    def evaluate(self, arrays: dict[str, np.ndarray], device: str = "cpu") -> dict[str, float]:
        """Metrics of a model on the test set; `loss` always, `accuracy` where it applies."""

    @abstractmethod
    def evaluate_partition(self, arrays: dict[str, np.ndarray], partition_id: int,
                           device: str = "cpu") -> dict[str, float]:
        """Metrics of a model on one client's own examples (federated evaluation)."""
