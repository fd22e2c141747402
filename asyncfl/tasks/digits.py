"""The default task: scikit-learn's bundled 8x8 digits (1797 images, no download)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from asyncfl.tasks.classification import ClassificationTask
from asyncfl.tasks.partition import partition_indices

TEST_FRACTION = 0.2


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers with pooling and two fully connected layers (about 12k weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_task(
    num_clients: int, partition: str, *, alpha: float, classes_per_client: int, seed: int
) -> ClassificationTask:
    """Digits split 80/20 (stratified, by seed) and the training part partitioned."""
    data = load_digits()
    images = data.images.astype("float32")
    images = (images - images.mean()) / images.std()
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=TEST_FRACTION, stratify=data.target, random_state=seed
    )
    parts = partition_indices(
        y_train, num_clients, partition, alpha=alpha, classes_per_client=classes_per_client,
        seed=seed,
    )
    return ClassificationTask(
        "digits", DigitsCNN,
        torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test).unsqueeze(1), torch.from_numpy(y_test).long(),
        parts,
    )
