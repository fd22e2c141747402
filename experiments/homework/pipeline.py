"""Microbatch pipeline parallelism over torch.distributed (gloo), and two pipelines with
data parallelism between matching stages (the homework's Part B; it stands apart from the
federated code and is not part of the asyncfl package).

The model (an MLP on the 8x8 digits) is cut into consecutive stages, one process per stage.
Each step a minibatch is cut into M equal microbatches and the stages run a fill-drain
(GPipe) schedule:

1. forward: for m = 0..M-1 a stage receives microbatch m's activations from the previous
   stage (`irecv`, tag 2m), runs its layers and sends the result on (`isend`, tag 2m); the
   last stage computes the loss of the microbatch, scaled by its share of the batch so that
   the microbatch losses add up to the minibatch's mean loss;
2. backward: for m = M-1..0 a stage receives the gradient of its output (tag 2m + 1) from the
   next stage, back-propagates through its layers (gradients accumulate in `.grad`) and sends
   the gradient of its input back (tag 2m + 1);
3. once every send has completed, one optimizer step per minibatch.

Why this cannot deadlock: every send is non-blocking (`isend`) and completed only at the end
of the step, so no process ever blocks in a send; every receive names the exact peer and tag
it needs next, and the message it waits for is sent by a process that needs nothing further
from it first (stage s's forward for m depends only on stage s-1's forward for m; its
backward for m only on stage s+1's backward for m). Forward activations and backward
gradients between the same two ranks travel with distinct tags, so a gradient can never be
taken for an activation, however the two directions interleave.

With two pipelines (B2), rank = pipeline x stages + stage; after the backward pass the
gradients of each stage are averaged over its data-parallel group (the same stage in every
pipeline) with `all_reduce` before the step, which equals one step on the union of the
pipelines' minibatches.

gloo runs `isend`/`irecv` on background threads but completes transfers in a way that
serializes with computation on CPU, so microbatches add little overlap here (nccl on GPUs
would overlap more); see `python experiments/homework/part_b.py --help`
for a timing run.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from torch import nn

HIDDEN = 64


@dataclass(frozen=True)
class PipelineConfig:
    """What every process of a run needs to know."""

    stages: int = 3
    pipelines: int = 1
    microbatches: int = 3
    batch_size: int = 24  # per pipeline
    steps: int = 5
    lr: float = 0.1
    seed: int = 0
    # seconds each stage sleeps per microbatch, cycled over stages (unequal compute in tests)
    stage_delays: tuple[float, ...] = ()
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.batch_size % self.microbatches:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by "
                             f"microbatches {self.microbatches}")
        if self.stages < 2 or self.pipelines < 1:
            raise ValueError("need at least 2 stages and 1 pipeline")

    @property
    def world_size(self) -> int:
        return self.stages * self.pipelines


def full_model(cfg: PipelineConfig) -> nn.Sequential:
    """The whole model, initialized from the seed: one block per stage."""
    torch.manual_seed(cfg.seed)
    blocks = [nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU())]
    blocks += [nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
               for _ in range(cfg.stages - 2)]
    blocks.append(nn.Sequential(nn.Linear(HIDDEN, 10)))
    return nn.Sequential(*blocks)


def batches(cfg: PipelineConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The union minibatch of every step (pipelines x batch_size examples), same everywhere."""
    data = load_digits()
    x = torch.from_numpy((data.data / 16.0).astype(np.float32))
    y = torch.from_numpy(data.target).long()
    generator = torch.Generator().manual_seed(cfg.seed)
    size = cfg.batch_size * cfg.pipelines
    out = []
    for _ in range(cfg.steps):
        index = torch.randperm(len(y), generator=generator)[:size]
        out.append((x[index], y[index]))
    return out


def train_reference(cfg: PipelineConfig) -> dict[str, torch.Tensor]:
    """Single-process training: the same model, steps and union minibatches."""
    model = full_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    for x, y in batches(cfg):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _stage_step(stage: nn.Module, cfg: PipelineConfig, rank: int, first: int, last: int,
                x: torch.Tensor, y: torch.Tensor, delay: float) -> None:
    """One fill-drain step of one stage over M microbatches; gradients left in `.grad`."""
    micro = cfg.batch_size // cfg.microbatches
    sends, inputs, outputs = [], [], []
    for m in range(cfg.microbatches):  # forward
        if rank == first:
            inp = x[m * micro:(m + 1) * micro]
        else:
            inp = torch.empty(micro, HIDDEN)
            dist.irecv(inp, src=rank - 1, tag=2 * m).wait()
            inp.requires_grad_()
        if delay:
            time.sleep(delay)
        out = stage(inp)
        if rank == last:
            out = nn.functional.cross_entropy(out, y[m * micro:(m + 1) * micro])
            out = out * (micro / cfg.batch_size)
        else:
            sends.append(dist.isend(out.detach(), dst=rank + 1, tag=2 * m))
        inputs.append(inp)
        outputs.append(out)
    for m in reversed(range(cfg.microbatches)):  # backward
        if rank == last:
            outputs[m].backward()
        else:
            grad = torch.empty(micro, outputs[m].shape[1])
            dist.irecv(grad, src=rank + 1, tag=2 * m + 1).wait()
            outputs[m].backward(grad)
        if rank != first:
            sends.append(dist.isend(inputs[m].grad, dst=rank - 1, tag=2 * m + 1))
    for request in sends:
        request.wait()


def _worker(rank: int, cfg: PipelineConfig, port: int, out_dir: str) -> None:
    """One process: stage `rank % stages` of pipeline `rank // stages`."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=cfg.world_size,
                            timeout=timedelta(seconds=cfg.timeout))
    pipeline, stage_index = divmod(rank, cfg.stages)
    # every process creates every group, in the same order
    stage_groups = [dist.new_group([p * cfg.stages + s for p in range(cfg.pipelines)])
                    for s in range(cfg.stages)]
    stage = full_model(cfg)[stage_index]
    optimizer = torch.optim.SGD(stage.parameters(), lr=cfg.lr)
    first, last = pipeline * cfg.stages, pipeline * cfg.stages + cfg.stages - 1
    delay = cfg.stage_delays[stage_index % len(cfg.stage_delays)] if cfg.stage_delays else 0.0
    started = time.perf_counter()
    for x, y in batches(cfg):
        part = slice(pipeline * cfg.batch_size, (pipeline + 1) * cfg.batch_size)
        optimizer.zero_grad()
        _stage_step(stage, cfg, rank, first, last, x[part], y[part], delay)
        if cfg.pipelines > 1:
            for p in stage.parameters():
                dist.all_reduce(p.grad, group=stage_groups[stage_index])
                p.grad /= cfg.pipelines
        optimizer.step()
    elapsed = time.perf_counter() - started
    torch.save({"stage": stage_index, "state": stage.state_dict(), "seconds": elapsed},
               Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PipelineRun:
    """Parameters of pipeline 0 as one state_dict (keys as in `full_model`), per-pipeline
    state_dicts, and the slowest process's training time for `steps` steps."""

    state: dict[str, torch.Tensor]
    pipeline_states: list[dict[str, torch.Tensor]]
    seconds: float
    steps: int

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds


def run_pipeline(cfg: PipelineConfig) -> PipelineRun:
    """Spawn one process per stage (and pipeline) on 127.0.0.1, train, collect parameters.

    Every process is joined within `cfg.timeout` seconds or killed by its PID."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(_worker, args=(cfg, free_port(), out_dir),
                                     nprocs=cfg.world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + cfg.timeout
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pipeline did not finish within {cfg.timeout} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        results = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True)
                   for r in range(cfg.world_size)]
    pipelines = []
    for p in range(cfg.pipelines):
        state = {}
        for r in range(p * cfg.stages, (p + 1) * cfg.stages):
            stage = results[r]["stage"]
            state.update({f"{stage}.{k}": v for k, v in results[r]["state"].items()})
        pipelines.append(state)
    seconds = max(r["seconds"] for r in results)
    return PipelineRun(pipelines[0], pipelines, seconds, cfg.steps)
