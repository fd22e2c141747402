"""Framework overhead: FedAvg inline vs the same local SGD steps in a plain torch loop."""

from __future__ import annotations

import time

import torch
from torch import nn

import asyncfl
from asyncfl.config import validate_run_config
from asyncfl.tasks import load_task

CLIENTS, ROUNDS, STEPS, BATCH = 10, 5, 20, 32


def federated(model: str, out: str, threads: int = 1) -> float:
    """Seconds of an inline FedAvg run (ServerApp, messages, aggregation, 2 evaluations)."""
    started = time.perf_counter()
    asyncfl.simulate(strategy="fedavg", task="digits", model=model, num_clients=CLIENTS,
                     num_server_rounds=ROUNDS, local_steps=STEPS, batch_size=BATCH, lr=0.05,
                     eval_every=ROUNDS, client_threads=threads, output_dir=out,
                     run_name=f"overhead-{model}")
    return time.perf_counter() - started


def plain(model: str, threads: int) -> float:
    """Seconds of the same SGD steps (same partitions, batches of the same size) in one
    torch loop with no federated machinery."""
    config = validate_run_config(
        {"task": "digits", "model": model, "num-clients": CLIENTS})
    task = load_task(config)
    torch.set_num_threads(threads)
    net = task.model_factory()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for client in range(CLIENTS):
            index = task.partitions[client]
            x, y = task.x_train[index], task.y_train[index]
            for _ in range(STEPS):
                batch = torch.randint(len(index), (BATCH,), generator=generator)
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                optimizer.step()
    return time.perf_counter() - started


def median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def measure(reps: int, out: str) -> list[dict]:
    """Per model and thread count: the federated run, the plain loop, their ratio. One
    unmeasured run first loads the data and imports what the first run would."""
    rows = []
    threads = sorted({1, torch.get_num_threads()})
    for model in ("small-cnn", "mnist-cnn"):
        federated(model, out)
        for n in threads:
            fed = median([federated(model, out, n) for _ in range(reps)])
            base = median([plain(model, n) for _ in range(reps)])
            rows.append({"model": model, "threads": n, "steps": CLIENTS * ROUNDS * STEPS,
                         "fedavg_inline_s": fed, "plain_torch_s": base, "ratio": fed / base})
    torch.set_num_threads(threads[-1])
    return rows
