import tomllib
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

import asyncfl
from asyncfl.config import (
    DEFAULTS,
    SETTINGS_BY_KEY,
    SYNC_STRATEGIES,
    ConfigError,
    validate_run_config,
)
from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.delays import DISTRIBUTIONS
from asyncfl.server_app import main as server_main
from asyncfl.strategies import STRATEGIES
from asyncfl.tasks import PRESET_NAMES, TASK_NAMES
from asyncfl.tasks.base import resolve_device
from asyncfl.tasks.images import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_every_key_with_its_default():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == DEFAULTS


def test_names_allowed_by_config_are_the_registered_ones():
    assert set(SETTINGS_BY_KEY["strategy"].choices) == set(STRATEGIES)
    assert set(SETTINGS_BY_KEY["task"].choices) == set(TASK_NAMES)
    assert set(PRESETS) == set(PRESET_NAMES)
    assert set(SETTINGS_BY_KEY["delay-dist"].choices) == set(DISTRIBUTIONS)
    assert set(SYNC_STRATEGIES) == {name for name, cls in STRATEGIES.items()
                                    if issubclass(cls, SyncStrategy)}


@pytest.mark.parametrize(
    ("overrides", "named", "allowed"),
    [
        ({"num-cleints": 5}, "num-cleints", "num-clients"),  # unknown key lists the known ones
        ({"num-clients": "ten"}, "num-clients", "integer >= 0"),  # wrong type
        ({"num-clients": -1}, "num-clients", "integer >= 0"),  # out of range
        ({"fraction": 1.5}, "fraction", "(0, 1]"),
        ({"lr": True}, "lr", "number > 0"),  # a bool is not a number here
        ({"strategy": "fedfoo"}, "strategy", "fedavg"),  # unknown strategy name
        ({"task": "imagenet"}, "task", "digits"),  # unknown task name
        ({"delay-dist": "pareto"}, "delay-dist", "lognormal"),  # unknown distribution
        ({"partition": "stripes"}, "partition", "shard"),
        ({"delay-dist": "trace"}, "delay-trace", "CSV file"),
        ({"strategy": "fedbuff", "round-timeout": 5.0}, "round-timeout", "reply-timeout"),
        ({"delay-profile": "1,x,3"}, "delay-profile", "comma-separated"),
        ({"delay-dist": "uniform", "delay-low": 2.0, "delay-high": 1.0}, "delay-low", "below"),
        ({"run-name": "../escape"}, "run-name", "without '/'"),
    ],
)
def test_bad_config_is_rejected_naming_key_and_allowed_values(overrides, named, allowed):
    with pytest.raises(ConfigError) as err:
        validate_run_config(overrides)
    assert f"'{named}'" in str(err.value) or named in str(err.value)
    assert allowed in str(err.value)


def test_ints_are_accepted_for_float_keys_and_defaults_fill_the_rest():
    config = validate_run_config({"lr": 1, "num-clients": 3})
    assert config["lr"] == 1.0 and isinstance(config["lr"], float)
    assert config["num-clients"] == 3 and config["strategy"] == DEFAULTS["strategy"]


def test_simulate_rejects_bad_config_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="num-server-rounds"):
        asyncfl.simulate(num_server_rounds=-1, output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


class UntouchableGrid:
    def __getattr__(self, name):
        raise AssertionError(f"the Grid was used ({name}) before the config was validated")


def test_server_app_validates_before_contacting_nodes():
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={**DEFAULTS, "batch-size": -4})
    with pytest.raises(ConfigError, match="batch-size"):
        server_main(UntouchableGrid(), context)


def test_a_missing_trace_file_stops_the_server_before_it_contacts_nodes(tmp_path):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={**DEFAULTS, "delay-dist": "trace", "output-dir": str(tmp_path),
                                  "delay-trace": str(tmp_path / "nowhere.csv")})
    with pytest.raises(ConfigError, match="'delay-trace' = .*nowhere.csv'?: cannot read"):
        server_main(UntouchableGrid(), context)


def test_a_gpu_the_server_does_not_have_stops_it_before_it_contacts_nodes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolve_device.cache_clear()
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={**DEFAULTS, "torch-device": "cuda",
                                  "output-dir": str(tmp_path)})
    try:
        with pytest.raises(ValueError, match="torch-device = 'cuda'"):
            server_main(UntouchableGrid(), context)
    finally:
        resolve_device.cache_clear()
