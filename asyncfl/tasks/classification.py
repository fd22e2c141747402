"""Image classification with a torch model: local minibatch SGD and test-set evaluation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from asyncfl.tasks.base import Task, TrainOutcome, TrainSettings


def state_to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into the model, keys and shapes checked by torch."""
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def minibatches(n: int, settings: TrainSettings, generator: torch.Generator):
    """Index batches for local training: `local_steps` batches after the first `skip_steps`
    of the task's sequence, or `local_epochs` epochs."""
    batch = settings.batch_size or n
    seen = 0
    last = settings.skip_steps + settings.local_steps
    for _ in range(settings.local_epochs if settings.local_steps == 0 else 1 << 62):
        order = torch.randperm(n, generator=generator) if batch < n else torch.arange(n)
        for start in range(0, n, batch):
            seen += 1
            if seen > settings.skip_steps:
                yield order[start:start + batch]
            if seen == last:
                return


class ClassificationTask(Task):
    """A torch classifier over in-memory tensors, split by client index lists.

    Clients train single-threaded by default (`client-threads`): results are then
    bit-identical whichever runtime or process runs them, and parallelism comes from running
    clients side by side. On a GPU (`torch-device`) results agree to float tolerance only.
    """

    #: test examples evaluated at once (bounds the memory of evaluating a large test set)
    eval_batch = 1024

    def __init__(
        self,
        name: str,
        model_factory: Callable[[], nn.Module],
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        partitions: list[np.ndarray],
    ) -> None:
        self.name = name
        self.model_factory = model_factory
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.partitions = [torch.as_tensor(p, dtype=torch.long) for p in partitions]
        self.num_partitions = len(partitions)
        self._model: nn.Module | None = None

    def model(self) -> nn.Module:
        """One model instance reused across calls (weights are always loaded first)."""
        if self._model is None:
            self._model = self.model_factory()
        return self._model

    def initial_arrays(self, seed: int) -> dict[str, np.ndarray]:
        torch.manual_seed(seed)
        return state_to_arrays(self.model_factory())

    def partition_size(self, partition_id: int) -> int:
        return len(self.partitions[partition_id])

    def train(
        self, arrays: dict[str, np.ndarray], partition_id: int, settings: TrainSettings
    ) -> TrainOutcome:
        torch.set_num_threads(settings.threads)
        model = self.model().to(settings.device)
        load_arrays(model, arrays)
        model.train()
        index = self.partitions[partition_id]
        x = self.x_train[index].to(settings.device)
        y = self.y_train[index].to(settings.device)
        params = dict(model.named_parameters())
        grad_sum = {k: torch.zeros_like(p) for k, p in params.items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(settings.seed)
        losses = []
        track = settings.returns == "gradient"
        for batch in minibatches(len(index), settings, generator):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            if track:
                for k, p in params.items():
                    grad_sum[k] += p.grad
            optimizer.step()
            losses.append(loss.item())
        weights = state_to_arrays(model)
        gradient = None
        if track:  # a buffer (batch-norm statistic) has no gradient: its change stands in
            gradient = {k: grad_sum[k].cpu().numpy() if k in grad_sum else v - arrays[k]
                        for k, v in weights.items()}
        return TrainOutcome(weights, gradient, len(index), float(np.mean(losses)), len(losses))

    def evaluate(self, arrays: dict[str, np.ndarray], device: str = "cpu") -> dict[str, float]:
        metrics, correct = self._evaluate(arrays, self.x_test, self.y_test, device)
        for label in torch.unique(self.y_test).tolist():
            mask = self.y_test == label
            metrics[f"accuracy-class-{label}"] = float(correct[mask].float().mean().item())
        return metrics

    def evaluate_partition(self, arrays: dict[str, np.ndarray], partition_id: int,
                           device: str = "cpu") -> dict[str, float]:
        index = self.partitions[partition_id]
        return self._evaluate(arrays, self.x_train[index], self.y_train[index], device)[0]

    @torch.no_grad()
    def _evaluate(self, arrays: dict[str, np.ndarray], x_all: torch.Tensor,
                  y_all: torch.Tensor, device: str) -> tuple[dict[str, float], torch.Tensor]:
        """Loss and accuracy on (x_all, y_all), and which examples the model got right."""
        model = self.model().to(device)
        load_arrays(model, arrays)
        model.eval()
        loss_sum, predicted = 0.0, []
        for start in range(0, len(y_all), self.eval_batch):
            x = x_all[start:start + self.eval_batch].to(device)
            y = y_all[start:start + self.eval_batch].to(device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            predicted.append(logits.argmax(1).cpu())
        correct = torch.cat(predicted) == y_all
        return ({"loss": loss_sum / len(y_all),
                 "accuracy": float(correct.float().mean().item())}, correct)
