"""The model and data of the quickstart: a small MLP on scikit-learn's 8x8 digits, split
IID over the nodes; each node keeps a fifth of its share for its own evaluation."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (torch.tensor(x[order] / 16.0, dtype=torch.float32),
            torch.tensor(y[order], dtype=torch.long))


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The server's held-out examples: the last 297."""
    x, y = _digits()
    return x[1500:], y[1500:]


def load_data(partition_id: int, num_partitions: int):
    """This node's (train, evaluate) tensors: its IID share of the first 1,500 examples."""
    x, y = _digits()
    index = np.arange(1500)[partition_id::num_partitions]
    cut = len(index) * 4 // 5
    return (x[index[:cut]], y[index[:cut]]), (x[index[cut:]], y[index[cut:]])


#: the quickstart's minibatch size
BATCH_SIZE = 32


def batches(n: int, batch_size: int = BATCH_SIZE):
    """Minibatch index ranges in a fixed order (the quickstart does not shuffle, so runs
    repeat exactly)."""
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size)


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) of the model on (x, y)."""
    with torch.no_grad():
        logits = net(x)
        return (float(nn.functional.cross_entropy(logits, y)),
                float((logits.argmax(1) == y).float().mean()))
