"""The `tracker` setting: TensorBoard event files and an MLflow store in the run's results
folder, read back with each library's own reader, hold exactly what evals.csv, config.json
and summary.json hold."""

import csv
import math
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import asyncfl
from asyncfl.config import ConfigError
from asyncfl.strategies import DivergenceError
from asyncfl.tracking import write_trackers

SMALL = dict(strategy="fedbuff", num_clients=4, num_server_rounds=4, local_steps=2)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One small run with both trackers: its folder, evals.csv rows, config and summary."""
    out = tmp_path_factory.mktemp("tracked") / "outputs"
    result = asyncfl.simulate(run_name="tracked", tracker="tensorboard,mlflow",
                              output_dir=str(out), **SMALL)
    with (result.output_dir / "evals.csv").open(newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return result.output_dir, rows, result.config, result.summary


def metric_columns(rows):
    """evals.csv's columns that are logged at step = version: the clocks and the metrics."""
    return [k for k in rows[0] if k != "version"]


def scalars(folder, tag):
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events, events.Scalars(tag)


@pytest.fixture
def mlflow_client(tracked, monkeypatch):
    """MLflow's client on the run's store (MLflow 3 opens a file store only when allowed)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=(tracked[0] / "mlruns").as_uri())


def test_tensorboard_scalars_are_evals_csv_by_version_on_the_runs_clock(tracked):
    folder, rows, _, _ = tracked
    assert len(rows) == 5 and {"accuracy", "loss", "accuracy-class-3"} <= set(rows[0])
    for column in metric_columns(rows):
        _, points = scalars(folder / "tensorboard", column)
        assert [p.step for p in points] == [int(r["version"]) for r in rows]
        assert [p.value for p in points] == [np.float32(r[column]) for r in rows], column
        assert [p.wall_time for p in points] == [r["virtual_time"] for r in rows]


def test_tensorboard_hparams_are_the_config_and_the_summary(tracked):
    folder, _, config, summary = tracked
    events, accuracy = scalars(folder / "tensorboard" / "summary", "summary/accuracy")
    assert [p.value for p in accuracy] == [np.float32(summary["accuracy"])]
    _, gini = scalars(folder / "tensorboard" / "summary", "summary/participation/gini")
    assert [p.value for p in gini] == [np.float32(summary["participation"]["gini"])]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert set(hparams) == set(config)
    for key, value in config.items():
        field = "string_value" if isinstance(value, str) else "number_value"
        assert getattr(hparams[key], field) == value, key


def test_mlflow_run_holds_the_config_and_every_evaluation_exactly(tracked, mlflow_client):
    folder, rows, config, summary = tracked
    experiment = mlflow_client.get_experiment_by_name("tracked")
    assert experiment.name in {e.name for e in mlflow_client.search_experiments()}
    (run,) = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params == {key: str(value) for key, value in config.items()}
    for column in metric_columns(rows):
        history = mlflow_client.get_metric_history(run.info.run_id, column)
        assert [(m.step, m.value) for m in history] == [
            (int(r["version"]), r[column]) for r in rows], column
        assert [m.timestamp for m in history] == [round(r["virtual_time"] * 1000) for r in rows]
    assert run.data.metrics["summary/accuracy"] == summary["accuracy"]
    assert run.data.metrics["summary/messages"] == summary["messages"]
    assert run.data.metrics["summary/participation/gini"] == summary["participation"]["gini"]
    assert not any(key.startswith("summary/status") for key in run.data.metrics)


def test_writing_the_trackers_again_replaces_their_stores(tracked, tmp_path, monkeypatch):
    """A resumed run writes its results again into the same folder: each store then holds
    the run once, not twice."""
    folder, rows, config, summary = tracked
    copy = tmp_path / "tracked"
    copy.mkdir()
    evals = [{k: (int(v) if k == "version" else v) for k, v in row.items()} for row in rows]
    for _ in range(2):
        write_trackers(copy, config, evals, summary)
    _, points = scalars(copy / "tensorboard", "accuracy")
    assert [p.step for p in points] == [int(r["version"]) for r in rows]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(copy / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == len(rows)


@pytest.mark.parametrize("value", ["wandb", "tensorboard,tensorboard", "tensorboard,",
                                   "TensorBoard"])
def test_a_bad_tracker_is_refused_naming_it_and_the_allowed_values(value, tmp_path):
    with pytest.raises(ConfigError) as err:
        asyncfl.simulate(tracker=value, output_dir=str(tmp_path / "outputs"), **SMALL)
    assert "'tracker'" in str(err.value)
    assert "tensorboard, mlflow, or both comma-separated: tensorboard,mlflow" in str(err.value)
    assert not any(tmp_path.iterdir())


def test_a_tracker_whose_package_is_missing_is_refused_before_any_work(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError) as err:
        asyncfl.simulate(tracker="tensorboard,mlflow", output_dir=str(tmp_path / "outputs"),
                         **SMALL)
    assert "'tracker'" in str(err.value) and "needs mlflow," in str(err.value)
    assert 'pip install -e ".[tracking]"' in str(err.value)
    assert not any(tmp_path.iterdir())


def test_without_a_tracker_nothing_is_written(tracked, tmp_path):
    _, rows, config, summary = tracked
    write_trackers(tmp_path, {**config, "tracker": ""}, rows, summary)
    assert not any(tmp_path.iterdir())


def test_a_stopped_run_is_tracked_as_failed_with_what_it_did(tmp_path, monkeypatch):
    """A diverging run stops with an error; its trackers get the evaluations until then and
    MLflow marks the run FAILED."""
    with pytest.raises(DivergenceError):
        asyncfl.simulate(run_name="diverged", server_lr=1e4, tracker="tensorboard,mlflow",
                         output_dir=str(tmp_path / "outputs"),
                         **{**SMALL, "num_server_rounds": 20})
    folder = tmp_path / "outputs" / "diverged"
    with (folder / "evals.csv").open(newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    _, points = scalars(folder / "tensorboard", "loss")
    np.testing.assert_array_equal([p.value for p in points], np.float32(losses))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("diverged").experiment_id])
    assert run.info.status == "FAILED"
    history = client.get_metric_history(run.info.run_id, "loss")
    np.testing.assert_array_equal([m.value for m in history], losses)


def test_nan_and_infinite_values_are_carried_not_dropped(tracked, tmp_path, monkeypatch):
    _, _, config, _ = tracked
    evals = [{"version": 0, "virtual_time": 0.0, "wall_time": 0.1, "loss": math.nan},
             {"version": 1, "virtual_time": 1.5, "wall_time": 0.2, "loss": math.inf}]
    write_trackers(tmp_path, config, evals, {"status": "stopped", "loss": math.inf})
    _, points = scalars(tmp_path / "tensorboard", "loss")
    np.testing.assert_array_equal([p.value for p in points], [math.nan, math.inf])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    np.testing.assert_array_equal([m.value for m in history], [math.nan, math.inf])
    assert run.data.metrics["summary/loss"] == math.inf and run.info.status == "FAILED"
