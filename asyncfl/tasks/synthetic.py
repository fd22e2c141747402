"""FedProx's synthetic(alpha, beta) federated logistic regression, for any number of clients.

Client k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta); its true model has W_k, b_k ~ N(u_k, 1)
and its inputs x ~ N(v_k, S) with v_k ~ N(B_k, 1) and S = diag(j^-1.2); labels are
argmax(W_k x + b_k). alpha controls how much the clients' models differ, beta how much their
inputs do. Sizes follow a log-normal law, as in the FedProx paper. A fifth of every client's
examples forms the shared test set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asyncfl.tasks.classification import ClassificationTask

DIMENSION, CLASSES = 60, 10
TEST_SHARE = 0.2


def synthetic_task(num_clients: int, *, alpha: float, beta: float, seed: int
                   ) -> ClassificationTask:
    rng = np.random.default_rng([seed, 7])
    sizes = (rng.lognormal(3.0, 1.0, num_clients) + 10).astype(int)
    covariance = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2
    train_x, train_y, test_x, test_y, parts, start = [], [], [], [], [], 0
    for n in sizes:
        u, b_shift = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        weights = rng.normal(u, 1, (CLASSES, DIMENSION))
        bias = rng.normal(u, 1, CLASSES)
        mean = rng.normal(b_shift, 1, DIMENSION)
        x = rng.normal(mean, np.sqrt(covariance), (n, DIMENSION))
        y = np.argmax(x @ weights.T + bias, axis=1)
        n_test = max(1, int(TEST_SHARE * n))
        test_x.append(x[:n_test])
        test_y.append(y[:n_test])
        train_x.append(x[n_test:])
        train_y.append(y[n_test:])
        parts.append(np.arange(start, start + n - n_test))
        start += n - n_test
    return ClassificationTask(
        "synthetic", lambda: nn.Linear(DIMENSION, CLASSES),
        torch.from_numpy(np.concatenate(train_x).astype(np.float32)),
        torch.from_numpy(np.concatenate(train_y)).long(),
        torch.from_numpy(np.concatenate(test_x).astype(np.float32)),
        torch.from_numpy(np.concatenate(test_y)).long(),
        parts,
    )
