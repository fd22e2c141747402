"""Experiment trackers: a run's evaluations, config and summary, also as TensorBoard event
files or an MLflow store, for people who compare runs in those tools.

A tracker is written once, at the end of the run, from the same rows and summary that
evals.csv and summary.json hold (`write_trackers`, called by results.write_results): there is
no live progress, and the tracker cannot disagree with the results folder. Each store lives
inside the run's own results folder (`tensorboard/`, `mlruns/`), so two runs never share one,
and it is rewritten whenever the results are: a resumed run's store holds the whole run once.
Each library is imported only when its tracker is chosen; `missing_packages` lets the run
config be refused before any work when one is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

#: the trackers a run-config `tracker` may name, comma-separated
TRACKERS = ("tensorboard", "mlflow")
TRACKER_ALLOWED = ("empty (none), tensorboard, mlflow, or both comma-separated: "
                   "tensorboard,mlflow")
INSTALL_HINT = 'pip install -e ".[tracking]"'
#: the module each tracker needs, and its folder inside the run's results folder
_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
FOLDERS = {"tensorboard": "tensorboard", "mlflow": "mlruns"}
#: evals.csv's columns that are a row's coordinates rather than metrics
_COORDINATES = ("version", "virtual_time", "wall_time")


def parse_trackers(text: str) -> tuple[str, ...]:
    """The trackers a `tracker` value names ('' = none); ValueError for an unknown or
    repeated name."""
    if text == "":
        return ()
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker {', '.join(map(repr, unknown))}")
    if len(set(names)) != len(names):
        raise ValueError("a tracker is named twice")
    return names


def missing_packages(names: Sequence[str]) -> list[str]:
    """The chosen trackers whose library is not installed (looked up, not imported)."""
    return [name for name in names if importlib.util.find_spec(_MODULES[name]) is None]


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of `values`, nested mappings flattened to `outer/inner` keys;
    strings, lists, booleans and None are left out (trackers plot numbers only)."""
    found: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            found.update(numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


class Tracker(Protocol):
    """What a run hands a tracker, in this order: its config, every evaluation (step = model
    version), its summary; then close."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run config, as the tool's params / hyperparameters."""

    def log_evaluation(self, version: int, virtual_time: float, wall_time: float,
                       metrics: Mapping[str, float]) -> None:
        """One evaluation of model `version` (loss, accuracy and any other numbers)."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """summary.json's numeric values (and its status)."""

    def close(self) -> None:
        """Flush and release the store."""


class TensorBoardTracker:
    """Event files in `folder`: every evaluation's metrics and clocks as scalars with
    step = model version and the event's wall time = the run's clock (virtual seconds, or
    wall seconds with clock = wall), so TensorBoard's "relative" axis shows the run's time.
    The config and the summary's numbers (tags `summary/...`) go to the HParams dashboard,
    in the sub-run `summary`."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.hparams: dict[str, Any] = {}

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Kept until the summary: TensorBoard records hparams together with their metrics."""
        self.hparams = dict(config)

    def log_evaluation(self, version: int, virtual_time: float, wall_time: float,
                       metrics: Mapping[str, float]) -> None:
        """Scalars at step `version`, stamped with the run's clock."""
        values = {"virtual_time": virtual_time, "wall_time": wall_time, **metrics}
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=version, walltime=virtual_time)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """The config and the summary's numbers as one HParams session."""
        metrics = {f"summary/{key}": value for key, value in numbers(summary).items()}
        self.writer.add_hparams(self.hparams, metrics, run_name="summary")

    def close(self) -> None:
        """Flush the event file."""
        self.writer.close()


class MlflowTracker:
    """An MLflow file store in `folder` (tracking URI `file:<folder>`) with one experiment,
    named after the run, holding one run: params = the run config (stringified, cut to
    MLflow's length limit), metrics with step = model version and timestamp = the run's
    clock in milliseconds, `summary/...` metrics at step 0, and the run's status."""

    def __init__(self, folder: Path, run_name: str) -> None:
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.tracking import MlflowClient

        uri = folder.resolve().as_uri()
        with _file_store_allowed():
            # lays the store out on disk: MlflowClient reuses a store it opened before in
            # this process, which finds no folder once open_tracker has replaced it
            FileStore(uri)
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.create_experiment(run_name)
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id
        self.status = "FAILED"  # until the summary says the run finished

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Params, in batches of the most MLflow takes at once."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in config.items()]
        for batch in _batches(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def log_evaluation(self, version: int, virtual_time: float, wall_time: float,
                       metrics: Mapping[str, float]) -> None:
        """Metrics at step `version`, the clocks among them."""
        values = {"virtual_time": virtual_time, "wall_time": wall_time, **metrics}
        self._log(values, step=version, timestamp=round(virtual_time * 1000))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """`summary/...` metrics; a stopped run ends as FAILED, a finished one FINISHED."""
        self._log({f"summary/{key}": value for key, value in numbers(summary).items()},
                  step=0, timestamp=0)
        # "finished" is results.FINISHED (not imported: results imports this module)
        self.status = "FINISHED" if summary.get("status") == "finished" else "FAILED"

    def close(self) -> None:
        """Mark the MLflow run terminated."""
        self.client.set_terminated(self.run_id, self.status)

    def _log(self, values: Mapping[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        metrics = [Metric(key, value, timestamp, step) for key, value in values.items()]
        for batch in _batches(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)


_OPENING = threading.Lock()


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (its own
    opt-out, read when the store is opened); set only while this opens one, one run at a
    time, so that runs in threads do not restore it under each other."""
    with _OPENING:
        before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            yield
        finally:
            if before is None:
                del os.environ["MLFLOW_ALLOW_FILE_STORE"]
            else:
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def open_tracker(name: str, out: Path, run_name: str) -> Tracker:
    """Tracker `name`, writing into its own fresh folder in the results folder `out`."""
    folder = out / FOLDERS[name]
    if folder.exists():  # the same run's earlier write (resume): replaced, not appended to
        shutil.rmtree(folder)
    if name == "tensorboard":
        return TensorBoardTracker(folder)
    return MlflowTracker(folder, run_name)


def write_trackers(out: Path, config: Mapping[str, Any], evals: Sequence[Mapping[str, Any]],
                   summary: Mapping[str, Any]) -> None:
    """Give every tracker the run config names its config, evaluations and summary."""
    for name in parse_trackers(str(config["tracker"])):
        tracker = open_tracker(name, out, str(config["run-name"]))
        try:
            tracker.log_config(config)
            for row in evals:
                metrics = numbers({k: v for k, v in row.items() if k not in _COORDINATES})
                tracker.log_evaluation(int(row["version"]), float(row["virtual_time"]),
                                       float(row["wall_time"]), metrics)
            tracker.log_summary(summary)
        finally:
            tracker.close()
