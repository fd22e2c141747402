"""task = images on data sets the tests write: a parquet folder, csv files naming PNGs, a
single file with test-fraction, an image folder, a hub dataset in the offline cache (also as
the mnist and cifar10 presets); the user's own model; every error before a node is contacted."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from flwr.app import Context, RecordDict
from PIL import Image as PILImage
from sklearn.datasets import load_digits

import asyncfl
from asyncfl import tasks
from asyncfl.config import DEFAULTS, ConfigError, validate_run_config
from asyncfl.server_app import main as server_main
from asyncfl.tasks import TrainSettings, images, load_task
from asyncfl.tasks.models import MnistCNN, ModelError
from asyncfl.tasks.partition import SCHEMES
from tests.custom_models import TinyNet
from tests.test_config import UntouchableGrid

DIGITS = load_digits()
ROOT = Path(__file__).resolve().parents[1]


def digit_images(start: int, stop: int) -> tuple[list, np.ndarray]:
    """Real 8x8 digits as 8-bit grey PIL images, and their labels."""
    pixels = (DIGITS.images[start:stop] * 16).clip(0, 255).astype(np.uint8)
    return [PILImage.fromarray(p) for p in pixels], DIGITS.target[start:stop]


def parquet_folder(root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """train-00000.parquet and test-00000.parquet with an Image and a ClassLabel column."""
    root.mkdir(parents=True)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    for split, (start, stop) in (("train", (0, n_train)), ("test", (n_train, n_train + n_test))):
        pictures, labels = digit_images(start, stop)
        Dataset.from_dict({"image": pictures, "label": labels}, features=features).to_parquet(
            root / f"{split}-00000.parquet")
    return root


def csv_folder(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """train.csv and test.csv naming PNG files (relative to the folder), an integer label
    column and a text column; every image is one grey level, 20 x its label."""
    (root / "png").mkdir(parents=True)
    for split, count in (("train", n_train), ("test", n_test)):
        rows = ["file,digit,note"]
        for i in range(count):
            label = i % 5
            name = f"png/{split}-{i}.png"
            PILImage.fromarray(np.full((6, 6), 20 * label, np.uint8)).save(root / name)
            rows.append(f"{name},{label},n{i}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def numbers_file(path: Path, n: int = 50) -> Path:
    """One parquet file, no split: 2-channel 6x5 images stored channels first as nested lists
    of floats, example i marked by the value i in its first pixel; labels i mod 5."""
    pixels = np.random.default_rng(0).normal(size=(n, 2, 6, 5)).astype(np.float32)
    pixels[:, 0, 0, 0] = np.arange(n)
    Dataset.from_dict({"pixels": pixels, "y": np.arange(n) % 5}).to_parquet(path)
    return path


def image_folder(root: Path, per_class: int = 8, sizes=((10, 12),)) -> Path:
    """One subfolder per class of RGB PNGs (width x height cycled through `sizes`)."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(("cat", "dog", "eel")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            width, height = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            PILImage.fromarray(pixels).save(root / name / f"{c}-{i}.png")
    return root


def cache_hub_dataset(source: Path, hub_id: str) -> None:
    """Put a parquet folder into the datasets cache as if `hub_id` had been downloaded once:
    what `load_dataset(hub_id)` leaves behind on a machine with network."""
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    builder = datasets.load_dataset_builder(
        "parquet", cache_dir=str(cache / "staging"),
        data_files={split: str(source / f"{split}-00000.parquet") for split in ("train", "test")})
    builder.download_and_prepare()
    owner, name = hub_id.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / Path(builder.cache_dir).name
    target.mkdir(parents=True)
    for file in Path(builder.cache_dir).iterdir():
        shutil.copy(file, target / file.name.replace("parquet-", f"{name}-"))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """A datasets cache of the test's own, no network, and no data loaded by another test."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    clear = (images.load_splits.cache_clear, images.image_data.cache_clear,
             tasks._build.cache_clear)
    for f in clear:
        f()
    yield
    for f in clear:
        f()


def images_task(dataset: Path | str, num_clients: int = 4, **overrides):
    return load_task(validate_run_config({"task": "images", "dataset": str(dataset),
                                          "num-clients": num_clients, **overrides}))


def assert_dealt_once(task) -> None:
    """Every training example is held by exactly one client."""
    dealt = np.sort(np.concatenate([p.numpy() for p in task.partitions]))
    assert np.array_equal(dealt, np.arange(len(task.y_train)))


def checked_task(dataset: Path, num_clients: int, found: tuple, train_shape: tuple,
                 test_shape: tuple, **overrides):
    """The task, once its found (image column, label column, classes), the shapes of its
    train and test images and its split over clients are checked."""
    task = images_task(dataset, num_clients, **overrides)
    data = images.image_data(images.ImageSource(str(dataset)),
                             overrides.get("test-fraction", 0.2), overrides.get("seed", 0))
    assert (data.image_column, data.label_column, data.num_classes) == found
    assert task.x_train.shape == train_shape and task.x_test.shape == test_shape
    assert_dealt_once(task)
    return task


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parquet_folder_splits_columns_and_every_partition(tmp_path, scheme):
    task = checked_task(parquet_folder(tmp_path / "pq"), 10, ("image", "label", 10),
                        (60, 1, 8, 8), (20, 1, 8, 8), partition=scheme)
    assert sorted(task.y_train.tolist()) == sorted(DIGITS.target[:60].tolist())
    assert sorted(task.y_test.tolist()) == sorted(DIGITS.target[60:80].tolist())
    assert abs(float(task.x_train.mean())) < 1e-5 and float(task.x_train.std()) == \
        pytest.approx(1.0, abs=1e-2)
    assert len(task.partitions) == 10 and all(len(p) for p in task.partitions)


def test_csv_files_naming_images_keep_each_image_with_its_label(tmp_path):
    task = checked_task(csv_folder(tmp_path / "csv"), 3, ("file", "digit", 5), (30, 1, 6, 6),
                        (10, 1, 6, 6))
    # each image is one grey level rising with its label: standardizing keeps the order
    for x, y in ((task.x_train, task.y_train), (task.x_test, task.y_test)):
        level = x[:, 0, 0, 0]
        assert torch.equal(x, level.view(-1, 1, 1, 1).expand_as(x))
        assert len(set(zip(y.tolist(), level.tolist(), strict=True))) == 5
        assert torch.all(torch.diff(level[torch.argsort(y)]) >= 0)


def test_a_single_file_holds_out_test_fraction_by_the_seed(tmp_path):
    path = numbers_file(tmp_path / "numbers.parquet")
    # channels-first numbers come out as 2 x 6 x 5 images
    task = checked_task(path, 5, ("pixels", "y", 5), (35, 2, 6, 5), (15, 2, 6, 5),
                        **{"test-fraction": 0.3})
    marks = torch.cat([task.x_train[:, 0, 0, 0], task.x_test[:, 0, 0, 0]])
    assert len(torch.unique(marks)) == 50  # every example in train or test, none in both
    assert torch.bincount(task.y_test).tolist() == [3] * 5  # stratified by label
    same = images_task(path, 5, **{"test-fraction": 0.3})
    other = images_task(path, 5, **{"test-fraction": 0.3, "seed": 1})
    assert torch.equal(same.x_test, task.x_test)
    assert not torch.equal(torch.sort(other.x_test[:, 0, 0, 0]).values,
                           torch.sort(task.x_test[:, 0, 0, 0]).values)


def test_an_image_folder_gives_one_class_per_subfolder_any_size_and_channels(tmp_path):
    task = checked_task(image_folder(tmp_path / "pets"), 3, ("image", "label", 3),
                        (19, 3, 12, 10), (5, 3, 12, 10))
    start = task.initial_arrays(0)
    outcome = task.train(start, 0, TrainSettings(lr=0.05, local_steps=2, batch_size=4))
    assert outcome.steps == 2 and "features.0.weight" in outcome.weights  # mnist-cnn, 3 in
    assert outcome.weights["features.0.weight"].shape == (32, 3, 5, 5)


def test_a_cached_hub_dataset_loads_offline(tmp_path):
    cache_hub_dataset(parquet_folder(tmp_path / "pq"), "tester/tiny-digits")
    task = images_task("tester/tiny-digits", 4)
    assert task.x_train.shape == (60, 1, 8, 8) and len(task.y_test) == 20
    assert_dealt_once(task)


@pytest.mark.parametrize(("preset", "hub_id", "shape", "first_layer"), [
    ("mnist", "ylecun/mnist", (28, 28), "features.0.weight"),
    ("cifar10", "uoft-cs/cifar10", (32, 32, 3), "conv1.weight"),
])
def test_presets_are_images_tasks_on_their_hub_dataset_and_model(tmp_path, preset, hub_id,
                                                                   shape, first_layer):
    root = tmp_path / "hub"
    root.mkdir()
    rng = np.random.default_rng(0)
    column = "img" if preset == "cifar10" else "image"  # the columns of the real ones
    features = Features({column: Image(), "label": ClassLabel(num_classes=10)})
    for split, n in (("train", 40), ("test", 10)):
        pictures = [PILImage.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
                    for _ in range(n)]
        Dataset.from_dict({column: pictures, "label": np.arange(n) % 10},
                          features=features).to_parquet(root / f"{split}-00000.parquet")
    cache_hub_dataset(root, hub_id)
    task = load_task(validate_run_config({"task": preset, "num-clients": 4}))
    channels = 3 if len(shape) == 3 else 1
    assert task.x_train.shape == (40, channels, shape[0], shape[1])
    assert (preset == "mnist") == isinstance(task.model_factory(), MnistCNN)
    assert task.initial_arrays(0)[first_layer].shape[1] == channels
    metrics = task.evaluate(task.initial_arrays(0))
    assert set(metrics) == {"loss", "accuracy"} | {f"accuracy-class-{c}" for c in range(10)}


@pytest.mark.parametrize("model", ["tests.custom_models:TinyNet",
                                   "tests.custom_models:two_layers"])
def test_a_custom_model_trains(tmp_path, model):
    data = parquet_folder(tmp_path / "pq")
    result = asyncfl.simulate(task="images", dataset=str(data), model=model, num_clients=3,
                              num_server_rounds=2, local_steps=3, output_dir=str(tmp_path),
                              run_name="custom")
    final = result.final_arrays()
    task = images_task(data, 3, model=model)
    start = task.initial_arrays(0)
    assert final.keys() == start.keys()
    assert all(not np.array_equal(final[k], start[k]) for k in start)
    assert 0.0 <= result.summary["accuracy"] <= 1.0
    if model.endswith("TinyNet"):
        assert isinstance(task.model_factory(), TinyNet) and final["linear.weight"].shape == \
            (10, 64)


def test_data_is_loaded_once_per_process_and_shared_by_tasks_and_clients(tmp_path):
    data = parquet_folder(tmp_path / "pq")
    asyncfl.simulate(task="images", dataset=str(data), num_clients=4, num_server_rounds=1,
                     local_steps=1, output_dir=str(tmp_path), run_name="once")
    assert images.load_splits.cache_info().misses == 1
    assert images.image_data.cache_info().misses == 1  # the server and its 4 clients
    iid, shard = images_task(data, 4), images_task(data, 4, partition="shard")
    assert iid is not shard and iid.x_train is shard.x_train and iid.x_test is shard.x_test
    assert images.image_data.cache_info().misses == 1


def server_run(tmp_path, **settings) -> None:
    """The ServerApp's main with a Grid that fails the test if it is touched."""
    config = {**DEFAULTS, "task": "images", "num-clients": 2, "output-dir": str(tmp_path / "out"),
              **settings}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=config)
    server_main(UntouchableGrid(), context)


def only_test_split(root: Path) -> Path:
    parquet_folder(root)
    (root / "train-00000.parquet").unlink()
    return root


def float_labels(root: Path) -> Path:
    root.mkdir()
    pictures, labels = digit_images(0, 20)
    Dataset.from_dict({"image": pictures, "score": labels.astype(float)}).to_parquet(
        root / "train.parquet")
    return root


@pytest.mark.parametrize(("make", "settings", "error", "message"), [
    (None, {"dataset": "no/such/folder.parquet"}, images.DatasetError,
     r"'dataset' = 'no/such/folder.parquet': no such file or folder"),
    (only_test_split, {}, images.DatasetError, r"'dataset' = .* has no train split \(found: test"),
    (parquet_folder, {"image-column": "picture"}, images.DatasetError,
     r"'image-column' = 'picture' is not a column of the data; its columns: image \(Image\), "
     r"label \(ClassLabel\)"),
    (parquet_folder, {"image-column": "label"}, images.DatasetError,
     r"'image-column' = 'label' holds ClassLabel.*not images"),
    (float_labels, {"label-column": "score"}, images.DatasetError,
     r"'label-column' = 'score' holds .*float64.*integer class ids"),
    (float_labels, {}, images.DatasetError,
     r"found no label column among: image \(Image\), score \(Value\); name it with "
     r"run-config 'label-column'"),
    (parquet_folder, {"num-clients": 61}, ValueError,
     r"num-clients = 61 exceeds the 60 training examples"),
    (lambda root: image_folder(root, sizes=((10, 12), (8, 8))), {}, images.DatasetError,
     r"image-column 'image': the images differ in size or channels"),
])
def test_bad_data_or_model_stops_the_server_before_it_contacts_nodes(tmp_path, make, settings,
                                                                     error, message):
    dataset = str(make(tmp_path / "data")) if make else settings.pop("dataset")
    with pytest.raises(error, match=message):
        server_run(tmp_path, dataset=dataset, **settings)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model", "message"), [
    ("tests.custom_models:three_classes", r"'model' = 'tests.custom_models:three_classes' on "
     r"1x8x8 inputs .* with 10 classes: it returns \(2, 3\) .* shape \(2, 10\)"),
    ("tests.custom_models:five_pixels",
     r"does not fit the data; a forward pass on one batch failed \(RuntimeError"),
    ("tests.custom_models:not_a_module", r"returned a str, not a torch.nn.Module"),
    ("no_such_module:Net", r"cannot import module 'no_such_module'.*inside the app folder, "
     r"installed, or on PYTHONPATH"),
    ("tests.custom_models:Missing", r"'tests.custom_models' has no attribute 'Missing'"),
])
def test_a_model_that_does_not_fit_stops_the_server_before_it_contacts_nodes(tmp_path, model,
                                                                             message):
    data = parquet_folder(tmp_path / "data")
    with pytest.raises(ModelError, match=message):
        server_run(tmp_path, dataset=str(data), model=model)
    assert not (tmp_path / "out").exists()


def test_an_uncached_hub_id_says_how_to_pre_cache_it(tmp_path):
    with pytest.raises(images.DatasetUnavailable, match=r"'dataset' = 'tester/never-cached' is "
                       r"no local path .*Pre-cache it on a machine with network"):
        server_run(tmp_path, dataset="tester/never-cached", **{"num-clients": 0})


@pytest.mark.parametrize(("settings", "named", "allowed"), [
    ({"task": "images"}, "dataset", "image folder"),
    ({"task": "digits", "dataset": "data"}, "dataset", "task = 'images'"),
    ({"task": "mnist", "dataset": "data"}, "dataset", "preset of its own hub dataset"),
    ({"task": "mean", "label-column": "y"}, "label-column", "image tasks"),
    ({"task": "synthetic", "model": "resnet18"}, "model", "has no model to choose"),
    ({"model": "resnet-50"}, "model", "'module:callable'"),
    ({"test-fraction": 1.0}, "test-fraction", "(0, 1)"),
])
def test_image_settings_are_checked_with_the_run_config(settings, named, allowed):
    with pytest.raises(ConfigError) as err:
        validate_run_config(settings)
    assert f"'{named}'" in str(err.value) and allowed in str(err.value)


@pytest.mark.slow  # Flower's SuperLink and simulation engine
@pytest.mark.ray
def test_flwr_run_takes_dataset_and_model_from_the_run_config(tmp_path):
    parquet_folder(tmp_path / "pq")
    settings = dict(task="images", model="tests.custom_models:TinyNet", num_clients=3,
                    num_server_rounds=2, local_steps=2)
    overrides = " ".join(f"{k.replace('_', '-')}='{v}'" if isinstance(v, str) else
                         f"{k.replace('_', '-')}={v}" for k, v in settings.items())
    # a path relative to where asyncfl-flwr-run starts; the ServerApp runs elsewhere
    overrides += f" dataset='pq' run-name='engine' output-dir='{tmp_path}'"
    done = subprocess.run(
        [sys.executable, "-m", "asyncfl.tools.flower_launcher", "--app", str(ROOT),
         "--run-config", overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-engine")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    engine = tmp_path / "engine"
    assert json.loads((engine / "config.json").read_text())["dataset"] == str(tmp_path / "pq")
    inline = asyncfl.simulate(dataset=str(tmp_path / "pq"), run_name="inline",
                              output_dir=str(tmp_path), **settings)
    with np.load(engine / "final_model.npz") as data:
        engine_arrays = {k: data[k] for k in data.files}
    inline_arrays = inline.final_arrays()
    assert engine_arrays.keys() == inline_arrays.keys() == {"linear.weight", "linear.bias"}
    assert all(np.array_equal(engine_arrays[k], inline_arrays[k]) for k in inline_arrays)
