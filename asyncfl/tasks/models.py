"""The models tasks can train, by run-config `model` name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class SmallCNN(nn.Module):
    """For 8x8 digits: two 3x3 conv layers with pooling, two fully connected (about 12k
    weights); with `batch_norm`, each convolution is followed by batch normalization (the
    `small-cnn-bn` model: running statistics and a batch counter beside the weights)."""

    def __init__(self, num_classes: int = 10, batch_norm: bool = False) -> None:
        super().__init__()

        def block(channels_in: int, channels_out: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(channels_out)] if batch_norm else []
            return [nn.Conv2d(channels_in, channels_out, 3, padding=1), *norm, nn.ReLU(),
                    nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(1, 16), *block(16, 32))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The APSB poster's MnistCNN: two 5x5 conv layers (32, 64 channels) with pooling, then
    two fully connected layers (512, classes). `image_size` adapts the first fully connected
    layer, so the same model also trains on 8x8 digits."""

    def __init__(self, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18_32x32(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 for 32x32 inputs: a 3x3 stride-1 first convolution and no
    max-pool, as is usual for CIFAR-10."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def model_factory(name: str, image_size: int, channels: int) -> Callable[[], nn.Module]:
    """A constructor for the named model on images of the given size and channels."""
    if name == "small-cnn" and image_size == 8 and channels == 1:
        return SmallCNN
    if name == "small-cnn-bn" and image_size == 8 and channels == 1:
        return lambda: SmallCNN(batch_norm=True)
    if name == "mnist-cnn" and channels == 1:
        return lambda: MnistCNN(image_size)
    if name == "resnet18" and channels == 3:
        return resnet18_32x32
    raise ValueError(f"model = {name} does not fit {channels}-channel {image_size}x{image_size}"
                     " images (small-cnn, small-cnn-bn: 8x8 digits; mnist-cnn: 1 channel; "
                     "resnet18: 3)")
