"""The models tasks train: built-in ones by name, or any `module:callable` of the user's.

Every model is made the same way, `builder(input_shape, num_classes)` with input_shape =
(channels, height, width), so a user's model plugs in exactly where a built-in one does; the
built-ins are also reachable as `asyncfl.tasks.models:SmallCNN` and so on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from asyncfl.tasks.base import MODEL_CALLABLE

Shape = tuple[int, int, int]
ModelBuilder = Callable[[Shape, int], nn.Module]


class ModelError(ValueError):
    """The `model` setting names something that cannot be imported, built or run on the data."""


class SmallCNN(nn.Module):
    """For small images such as 8x8 digits: two 3x3 conv layers with pooling, two fully
    connected (about 12k weights on digits); with `batch_norm`, each convolution is followed
    by batch normalization (the `small-cnn-bn` model: running statistics and a batch counter
    beside the weights)."""

    def __init__(self, input_shape: Shape = (1, 8, 8), num_classes: int = 10,
                 batch_norm: bool = False) -> None:
        super().__init__()
        channels, height, width = input_shape

        def block(channels_in: int, channels_out: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(channels_out)] if batch_norm else []
            return [nn.Conv2d(channels_in, channels_out, 3, padding=1), *norm, nn.ReLU(),
                    nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(channels, 16), *block(16, 32))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The APSB poster's MnistCNN: two 5x5 conv layers (32, 64 channels) with pooling, then
    two fully connected layers (512, classes). The input shape sets the first layer's
    channels and the first fully connected layer; feature maps larger than 7x7 (images above
    28x28) are average-pooled to 7x7, so the model stays MNIST-sized on any image."""

    def __init__(self, input_shape: Shape = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = input_shape
        side = (min(height // 4, 7), min(width // 4, 7))
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(side),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side[0] * side[1], 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18_32x32(input_shape: Shape = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 for small inputs: a 3x3 stride-1 first convolution (taking the
    images' channels) and no max-pool, as is usual for CIFAR-10."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


#: the built-in models by `model` name (the names config validates: BUILTIN_MODEL_NAMES)
BUILTIN_MODELS: dict[str, ModelBuilder] = {
    "small-cnn": SmallCNN,
    "small-cnn-bn": partial(SmallCNN, batch_norm=True),
    "mnist-cnn": MnistCNN,
    "resnet18": resnet18_32x32,
}


def model_builder(name: str) -> ModelBuilder:
    """The builder a `model` setting names: a built-in name or `module:callable`, imported
    here (so the module must be importable in every process that trains: inside the app
    folder, installed, or on PYTHONPATH)."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if not MODEL_CALLABLE.match(name):
        raise ModelError(f"run-config 'model' = {name!r} is neither a built-in model "
                         f"({', '.join(BUILTIN_MODELS)}) nor 'module:callable'")
    module_name, attribute = name.split(":")
    try:
        found = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"run-config 'model' = {name!r}: cannot import module {module_name!r} "
                         f"({err}); it must be importable in every process that runs the app: "
                         "inside the app folder, installed, or on PYTHONPATH") from err
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ModelError(f"run-config 'model' = {name!r}: {module_name!r} has no "
                             f"attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ModelError(f"run-config 'model' = {name!r} is not callable; it must be a "
                         "function or class taking (input_shape, num_classes)")
    return found


def fitted_factory(name: str, sample: torch.Tensor, num_classes: int) -> Callable[[], nn.Module]:
    """A constructor for model `name` on inputs like `sample` (a batch, NCHW), checked now by
    building the model and running it on the batch: a model that does not fit the data stops
    the run here, naming the setting, not at a client's first task. The check leaves torch's
    global random state as it was (initial weights depend on it)."""
    shape = tuple(int(d) for d in sample.shape[1:])
    factory = partial(model_builder(name), shape, num_classes)
    what = f"run-config 'model' = {name!r} on {'x'.join(map(str, shape))} inputs " \
           f"(channels x height x width) with {num_classes} classes"
    with torch.random.fork_rng(devices=[]):
        try:
            model = factory()
        except Exception as err:
            raise ModelError(f"{what}: building it failed ({type(err).__name__}: {err})") from err
        if not isinstance(model, nn.Module):
            raise ModelError(f"{what}: it returned a {type(model).__name__}, not a "
                             "torch.nn.Module")
        try:
            with torch.no_grad():
                out = model.eval()(sample)
        except Exception as err:
            raise ModelError(f"{what}: it does not fit the data; a forward pass on one batch "
                             f"failed ({type(err).__name__}: {err})") from err
    expected = (len(sample), num_classes)
    if tuple(getattr(out, "shape", ())) != expected:
        raise ModelError(f"{what}: it returns {tuple(getattr(out, 'shape', ()))} for a batch "
                         f"of {len(sample)}; it must return one logit per class, shape "
                         f"{expected}")
    return factory
