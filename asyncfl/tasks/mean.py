"""Seed 000's task: estimate the mean of the clients' integer values."""

from __future__ import annotations

import numpy as np

from asyncfl.tasks.base import Task, TrainOutcome, TrainSettings

VALUE_RANGE = 1000


class MeanTask(Task):
    """Each client holds one integer in [0, 1000); the model is one scalar estimate.

    A client's "training" returns its value as its model (one example), so averaging the
    replies estimates the mean; the loss is the absolute error against the true mean.
    """

    name = "mean"

    def __init__(self, num_clients: int, seed: int) -> None:
        self.num_partitions = num_clients
        self.values = np.random.default_rng([seed, 4]).integers(0, VALUE_RANGE, num_clients)
        self.true_mean = float(self.values.mean())

    def initial_arrays(self, seed: int) -> dict[str, np.ndarray]:
        return {"estimate": np.zeros(1, dtype=np.float64)}

    def partition_size(self, partition_id: int) -> int:
        return 1

    def train(
        self, arrays: dict[str, np.ndarray], partition_id: int, settings: TrainSettings
    ) -> TrainOutcome:
        value = np.array([float(self.values[partition_id])])
        gradient = {"estimate": arrays["estimate"] - value}  # of 0.5 (estimate - value)^2
        loss = float(abs(arrays["estimate"][0] - value[0]))
        # the value is the same after any number of steps; counting the steps asked for keeps
        # the reply's step count (and a wall-clock sleep) in line with the delay model
        steps = settings.local_steps or settings.local_epochs
        return TrainOutcome({"estimate": value}, gradient, 1, loss, steps)

    def evaluate_partition(self, arrays: dict[str, np.ndarray], partition_id: int,
                           device: str = "cpu") -> dict[str, float]:
        value = float(self.values[partition_id])
        return {"loss": abs(float(arrays["estimate"][0]) - value)}

    def evaluate(self, arrays: dict[str, np.ndarray], device: str = "cpu") -> dict[str, float]:
        error = abs(float(arrays["estimate"][0]) - self.true_mean)
        return {"loss": error, "abs-error": error, "estimate": float(arrays["estimate"][0]),
                "true-mean": self.true_mean}
