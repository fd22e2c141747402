"""Many clients of a classification task trained as one vectorized computation.

Every client's parameters are stacked along a leading axis and one `torch.func.vmap` of
`grad_and_value(functional_call(...))` computes all their minibatch gradients at once: the
same math as `ClassificationTask.train` (plain SGD, each client's own data, minibatch order and
seed, from `minibatches`), with far fewer small kernel calls. Clients whose minibatches differ
in size are padded with examples of weight 0; clients with fewer steps leave the stack once
they are done. Only the clients given (P) are held at a time: P models, P gradients.

Results agree with one-at-a-time training to float rounding, not bit for bit (batched kernels
sum in another order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from asyncfl.tasks.base import Task, TrainOutcome, TrainSettings
from asyncfl.tasks.classification import ClassificationTask, minibatches


@dataclass(frozen=True)
class ClientJob:
    """One client's task: the model it starts from, its partition, its settings."""

    arrays: dict[str, np.ndarray]
    partition_id: int
    settings: TrainSettings


def _weighted_loss(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One client's minibatch loss: the mean cross-entropy over its real examples (padding
    has weight 0)."""
    logits = functional_call(model, params, (x,))
    return (nn.functional.cross_entropy(logits, y, reduction="none") * weight).sum()


class _Plan:
    """The minibatches of each client (indices into the task's training set), padded per
    step to one shape."""

    def __init__(self, task: ClassificationTask, jobs: Sequence[ClientJob]) -> None:
        self.batches: list[list[torch.Tensor]] = []
        for job in jobs:
            index = task.partitions[job.partition_id]
            generator = torch.Generator().manual_seed(job.settings.seed)
            self.batches.append([index[b] for b in minibatches(len(index), job.settings,
                                                                generator)])
        self.steps = [len(b) for b in self.batches]

    def step(self, t: int, clients: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t of `clients`: example indices (clients x widest batch) and their weights
        (1 / batch size, 0 for padding)."""
        width = max(len(self.batches[c][t]) for c in clients)
        index = torch.empty(len(clients), width, dtype=torch.long)
        weight = torch.zeros(len(clients), width)
        for row, c in enumerate(clients):
            batch = self.batches[c][t]
            index[row, :len(batch)] = batch
            index[row, len(batch):] = batch[0]
            weight[row, :len(batch)] = 1.0 / len(batch)
        return index, weight


def train_together(task: ClassificationTask, jobs: Sequence[ClientJob]) -> list[TrainOutcome]:
    """Train every job's client at once; the outcomes are those `task.train` gives one by one
    (to float rounding). All jobs train on the first job's device and thread count."""
    first = jobs[0].settings
    torch.set_num_threads(max(job.settings.threads for job in jobs))
    device = first.device
    model = task.model().to(device)
    template = dict(model.named_parameters())
    if len(template) != len(model.state_dict()):
        raise ValueError("the model keeps buffers besides its parameters; train it one "
                         "client at a time")
    params = {k: torch.stack([torch.tensor(np.asarray(job.arrays[k]), dtype=p.dtype)
                              for job in jobs]).to(device)
              for k, p in template.items()}
    for k, p in template.items():
        if params[k].shape[1:] != p.shape:
            raise ValueError(f"{k}: got shape {tuple(params[k].shape[1:])}, the model has "
                             f"{tuple(p.shape)}")
    lr = torch.tensor([job.settings.lr for job in jobs], dtype=torch.float32, device=device)
    track = [job.settings.returns == "gradient" for job in jobs]
    grad_sum = {k: torch.zeros_like(v) for k, v in params.items()} if any(track) else None
    plan = _Plan(task, jobs)
    losses = torch.zeros(len(jobs), max(plan.steps), device=device)
    step_grads = vmap(grad_and_value(lambda p, x, y, w: _weighted_loss(model, p, x, y, w)))
    everyone = list(range(len(jobs)))
    for t in range(max(plan.steps)):
        active = [c for c in everyone if plan.steps[c] > t]
        index, weight = plan.step(t, active)
        x = task.x_train[index].to(device)
        y = task.y_train[index].to(device)
        if len(active) == len(jobs):
            grads, loss = step_grads(params, x, y, weight.to(device))
            with torch.no_grad():
                for k, g in grads.items():
                    params[k] -= lr.view(-1, *[1] * (g.dim() - 1)) * g
                    if grad_sum is not None:
                        grad_sum[k] += g
            losses[:, t] = loss.detach()
            continue
        rows = torch.tensor(active, device=device)
        sub = {k: v[rows] for k, v in params.items()}
        grads, loss = step_grads(sub, x, y, weight.to(device))
        with torch.no_grad():
            for k, g in grads.items():
                params[k][rows] = sub[k] - lr[rows].view(-1, *[1] * (g.dim() - 1)) * g
                if grad_sum is not None:
                    grad_sum[k][rows] += g
        losses[rows, t] = loss.detach()
    weights = {k: v.detach().cpu().numpy() for k, v in params.items()}
    sums = ({k: v.cpu().numpy() for k, v in grad_sum.items()} if grad_sum is not None
            else None)
    table = losses.cpu().numpy()
    outcomes = []
    for c, job in enumerate(jobs):
        gradient = ({k: v[c].copy() for k, v in sums.items()} if sums is not None and track[c]
                    else None)
        outcomes.append(TrainOutcome(
            {k: v[c].copy() for k, v in weights.items()}, gradient,
            len(task.partitions[job.partition_id]),
            float(np.mean(table[c, :plan.steps[c]].astype(np.float64))), plan.steps[c]))
    return outcomes


def batching_problem(task: Task, device: str = "cpu") -> str:
    """Why the clients of `task` cannot be trained together ('' if they can): no torch model,
    a model with buffers (batch norm's running statistics and counters follow no plain SGD
    step), or one that torch.func cannot vectorize (tried on two clients, one step)."""
    if not isinstance(task, ClassificationTask):
        return f"task = {task.name} trains no torch model"
    model = task.model()
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return (f"the model keeps state that is not trained ({', '.join(buffers[:3])}"
                f"{', ...' if len(buffers) > 3 else ''}; batch norm?), which vectorized "
                "training does not update")
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    settings = TrainSettings(lr=0.0, local_steps=1, batch_size=2, device=device)
    probe = [ClientJob(arrays, 0, settings)] * 2
    try:
        train_together(task, probe)
    except Exception as err:  # what torch.func cannot do with this model, said plainly
        return f"torch.func cannot vectorize the model ({type(err).__name__}: {err})"
    return ""
