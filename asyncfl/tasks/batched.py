"""Many clients of a classification task trained as one vectorized computation.

Every client's parameters are stacked along a leading axis; one `torch.func.vmap` of
`functional_call` runs all their forward passes as one computation (a convolution with
stacked weights becomes one grouped convolution) and one backward pass gives every client's
gradient (the clients share no parameter, so the gradient of the summed losses is each one's
own). That measured faster here than `vmap(grad(...))`, whose batched backward rules are
slower on CPU. It is the same math as `ClassificationTask.train` (plain SGD, each client's
own data, minibatch order and seed, from `minibatches`), with far fewer small kernel calls.
Clients whose minibatches differ in size are padded with examples of weight 0; clients with
fewer steps leave the stack once they are done. Only the clients given (P) are held at a
time: P models, P gradients.

Results agree with one-at-a-time training to float rounding, not bit for bit (batched kernels
sum in another order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from asyncfl.tasks.base import Task, TrainOutcome, TrainSettings
from asyncfl.tasks.classification import ClassificationTask, minibatches


@dataclass(frozen=True)
class ClientJob:
    """One client's task: the model it starts from, its partition, its settings."""

    arrays: dict[str, np.ndarray]
    partition_id: int
    settings: TrainSettings


class _Plan:
    """Every client's minibatches as one padded table of example indices (into the task's
    training set), clients x shared steps x widest batch, with weights 1 / batch size (0:
    padding). `shared` counts the steps two or more clients still run; the one client left
    after them runs its own through `task.train` (see `_finish_alone`), so they are not
    tabled.
    """

    def __init__(self, task: ClassificationTask, jobs: Sequence[ClientJob]) -> None:
        batches = []
        for job in jobs:
            index = task.partitions[job.partition_id]
            generator = torch.Generator().manual_seed(job.settings.seed)
            batches.append([index[b] for b in minibatches(len(index), job.settings,
                                                           generator)])
        counts = [len(b) for b in batches]
        self.steps = torch.tensor(counts)
        self.shared = sorted(counts)[-2] if len(counts) > 1 else 0
        width = max((len(batch) for client in batches for batch in client[:self.shared]),
                    default=1)
        self.index = torch.zeros(len(jobs), self.shared, width, dtype=torch.long)
        self.weight = torch.zeros(self.index.shape)
        self.width = torch.zeros(self.index.shape[:2], dtype=torch.long)
        for c, client in enumerate(batches):
            for t, batch in enumerate(client[:self.shared]):
                self.index[c, t, :len(batch)] = batch
                self.weight[c, t, :len(batch)] = 1.0 / len(batch)
                self.width[c, t] = len(batch)

    def step(self, t: int, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step t of the `active` clients (a mask): example indices and weights, as wide as
        the widest of their batches."""
        width = int(self.width[active, t].max())
        return self.index[active, t, :width], self.weight[active, t, :width]


def _rows(active: torch.Tensor, device: str) -> slice | torch.Tensor:
    """The active clients' rows: a slice when they are contiguous (indexing gives views),
    else an index tensor (indexing gives copies)."""
    rows = active.nonzero().flatten()
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        return slice(first, last + 1)
    return rows.to(device)


def _finish_alone(task: ClassificationTask, jobs: Sequence[ClientJob], client: int, step: int,
                  params: dict[str, torch.Tensor], grad_sum: dict[str, torch.Tensor] | None,
                  losses: torch.Tensor, steps: int) -> None:
    """Run the last client's remaining steps [step, steps) through `task.train` (the same
    minibatch sequence, resumed with skip_steps), in place in the stacked state: one client
    under vmap costs about 1.7x a plain step (ESync's fastest workers run thousands)."""
    job = jobs[client]
    settings = replace(job.settings, local_steps=steps - step, skip_steps=step)
    arrays = {k: v[client].detach().cpu().numpy() for k, v in params.items()}
    rest = task.train(arrays, job.partition_id, settings)
    for k, v in params.items():
        v[client] = torch.as_tensor(rest.weights[k], device=v.device)
        if grad_sum is not None and rest.gradient is not None:
            grad_sum[k][client] += torch.as_tensor(rest.gradient[k], device=v.device)
    losses[client, step:steps] = rest.train_loss  # the mean over all steps stays exact


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
    losses = torch.zeros(len(jobs), int(plan.steps.max()), device=device)
    forward = vmap(lambda p, x: functional_call(model, p, (x,)))
    for t in range(plan.shared):
        active = plan.steps > t
        pick = _rows(active, device)
        index, weight = plan.step(t, active)
        # contiguous clients (all of them, say): views of the stacked parameters, updated in
        # place; else copies, written back
        copies = not isinstance(pick, slice)
        sub = {k: v[pick].detach().requires_grad_() for k, v in params.items()}
        logits = forward(sub, task.x_train[index].to(device))
        y = task.y_train[index].to(device)
        loss = (nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                .view(y.shape) * weight.to(device)).sum(1)
        # clients share no parameter: the gradient of the summed losses is each one's own
        grads = torch.autograd.grad(loss.sum(), list(sub.values()))
        with torch.no_grad():
            for (k, p), g in zip(sub.items(), grads, strict=True):
                p.detach().addcmul_(lr[pick].view(-1, *[1] * (g.dim() - 1)), g, value=-1)
                if copies:
                    params[k][pick] = p
                if grad_sum is not None:
                    grad_sum[k][pick] += g
            losses[pick, t] = loss
    longest = int(plan.steps.argmax())
    if plan.steps[longest] > plan.shared:  # the long tail of uneven step counts
        _finish_alone(task, jobs, longest, plan.shared, params, grad_sum, losses,
                      int(plan.steps[longest]))
    weights = {k: v.detach().cpu().numpy() for k, v in params.items()}
    sums = ({k: v.cpu().numpy() for k, v in grad_sum.items()} if grad_sum is not None
            else None)
    table = losses.cpu().numpy()
    outcomes = []
    steps = plan.steps.tolist()
    for c, job in enumerate(jobs):
        gradient = ({k: v[c].copy() for k, v in sums.items()} if sums is not None and track[c]
                    else None)
        outcomes.append(TrainOutcome(
            {k: v[c].copy() for k, v in weights.items()}, gradient,
            len(task.partitions[job.partition_id]),
            float(np.mean(table[c, :steps[c]].astype(np.float64))), steps[c]))
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


#: copies of the parameters one client holds while trained together: stacked weights, their
#: gradients, the copies of a non-contiguous pick, a gradient sum (plain SGD: no other state)
PARAMETER_COPIES = 4
#: activations are kept for the backward pass and their gradients flow back: twice
ACTIVATION_COPIES = 2


def client_bytes(task: ClassificationTask, batch_size: int) -> int:
    """Rough bytes one client costs while trained together: PARAMETER_COPIES x its float32
    parameters plus ACTIVATION_COPIES x the outputs of every module of one forward pass over
    `batch_size` examples (0: the largest partition), measured on the cpu."""
    model = task.model()
    params = sum(p.numel() for p in model.parameters())
    if batch_size <= 0:
        batch_size = max((len(p) for p in task.partitions), default=1)
    batch_size = max(1, min(batch_size, len(task.x_train)))
    outputs = [0]

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.to("cpu")(task.x_train[:batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    return 4 * (PARAMETER_COPIES * params + ACTIVATION_COPIES * outputs[0])
