"""What holds for every registered strategy: its arguments are documented with their defaults,
its examples run, bad arguments fail at construction naming the argument, and a second
`start()` on the same object runs afresh."""

import doctest
import importlib
import inspect
import math
import re

import numpy as np
import pytest

import asyncfl.strategies.blocks
from asyncfl.client_app import app
from asyncfl.config import validate_run_config
from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.protocol import arrays_to_record, record_to_arrays
from asyncfl.server_app import train_config
from asyncfl.strategies import REGISTRY
from asyncfl.tasks import load_task
from asyncfl.tools.inline import InlineGrid

NAMES = sorted(REGISTRY)


def own_parameters(cls) -> list[inspect.Parameter]:
    """The arguments of `cls` and of the strategy classes it builds on (FedBuff's include
    BufferedStrategy's), not the engine's common ones."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass.__module__.startswith("asyncfl.strategies"):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    found.setdefault(p.name, p)
    return list(found.values())


@pytest.mark.parametrize("name", NAMES)
def test_every_argument_is_documented_with_its_default(name):
    cls = REGISTRY[name].cls
    doc = inspect.getdoc(cls) or ""
    assert "Args:" in doc and "Example:" in doc, f"{cls.__name__}: no Args: or Example: section"
    args = doc.split("Args:", 1)[1].split("Example:", 1)[0]
    for parameter in own_parameters(cls):
        entry = re.search(rf"^( +){parameter.name}: (.*?)(?=^\1\S|\Z)", args, re.S | re.M)
        assert entry, f"{cls.__name__}: argument {parameter.name} is not in Args:"
        default = parameter.default
        shown = {repr(default), f'"{default}"'} if isinstance(default, str) else {repr(default)}
        assert any(f"Default: {s}." in " ".join(entry.group(2).split()) for s in shown), (
            f"{cls.__name__}: {parameter.name}'s entry does not state Default: {default!r}")


MODULES = sorted({REGISTRY[name].cls.__module__ for name in NAMES} | {"asyncfl.strategies.blocks"})


@pytest.mark.parametrize("module", MODULES)
def test_the_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module != asyncfl.strategies.blocks.__name__:
        assert result.attempted > 0, f"{module} has no example"


#: bad values per kind of argument (by its default), each must raise naming the argument
BAD_BY_NAME = {
    "server_lr": [0.0, -1.0, "0.1", math.inf],
    "staleness": ["bogus", 3],
    "server_optimizer": ["nope", 3],
    "client_returns": ["gradient", "bogus"],
}


def bad_values(parameter: inspect.Parameter) -> list:
    if parameter.name in BAD_BY_NAME:
        return BAD_BY_NAME[parameter.name]
    default = parameter.default
    if isinstance(default, bool):
        return ["yes"]
    if isinstance(default, int):
        return [2.5, -1, "3"]
    if isinstance(default, float):
        return [-1.0, math.nan, "1"]
    raise AssertionError(f"no bad values for {parameter.name} = {default!r}")


CASES = [(name, p.name, bad) for name in NAMES for p in own_parameters(REGISTRY[name].cls)
         for bad in bad_values(p)]


@pytest.mark.parametrize(("name", "argument", "bad"), CASES)
def test_a_bad_argument_fails_at_construction_naming_it(name, argument, bad):
    with pytest.raises((TypeError, ValueError), match=argument):
        REGISTRY[name].cls(**{argument: bad})


@pytest.mark.parametrize(("argument", "bad"), [
    ("fraction_evaluate", 1.5), ("min_evaluate_nodes", 2.5), ("min_available_nodes", -1),
    ("time_budget", -1.0), ("seed", 0.5), ("poll_interval", 0.0), ("retry_backoff", -1.0),
])
def test_the_common_arguments_are_checked_too(argument, bad):
    with pytest.raises((TypeError, ValueError), match=argument):
        REGISTRY["fedbuff"].cls(**{argument: bad})


def test_the_issue_examples_fail_at_construction():
    fedbuff = REGISTRY["fedbuff"].cls
    for kwargs, argument in [({"server_lr": 0.0}, "server_lr"), ({"staleness": "bogus"},
                             "staleness"), ({"server_optimizer": "nope"}, "server_optimizer"),
                             ({"buffer_size": 2.5}, "buffer_size")]:
        with pytest.raises((TypeError, ValueError), match=argument):
            fedbuff(**kwargs)
    assert fedbuff(staleness="polynomial").staleness(3) == 0.5  # a documented name
    assert fedbuff(server_optimizer="adam").new_rule().optimizer.name == "adam"


def start(strategy, config, task, grid):
    initial = arrays_to_record(task.initial_arrays(0))
    return strategy.start(grid, initial, num_rounds=4, train_config=train_config(config))


@pytest.mark.parametrize("name", NAMES)
def test_a_second_start_runs_afresh(name):
    """Two starts of one object give the same model, events and totals as each other."""
    settings = {"strategy": name, "num-clients": 4, "local-steps": 2, "batch-size": 16,
                "concurrency": 3, "buffer-size": 2}
    if name == "running-mean":
        settings["task"] = "mean"
    config = validate_run_config(settings)
    task = load_task(config)
    registered = REGISTRY[name]
    strategy = registered.cls(clock=VirtualClock(), delays=DelayModel(np.array([1, 1.3, 2, 3.5])),
                              seed=3, **registered.settings(config))
    runs = []
    for _ in range(2):
        result = start(strategy, config, task, InlineGrid(app, config, 4))
        runs.append((record_to_arrays(result.arrays), strategy.recorder.events,
                     strategy.recorder.totals))
    (first, events_a, totals_a), (second, events_b, totals_b) = runs
    assert events_a and [(e["client"], e["version_apply"]) for e in events_a] == [
        (e["client"], e["version_apply"]) for e in events_b]
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert totals_a.virtual_time == totals_b.virtual_time


def test_apsb_without_local_steps_says_what_it_needs():
    from flwr.app import ConfigRecord

    from asyncfl.strategies import APSB, CapabilityError

    config = validate_run_config({"strategy": "apsb", "num-clients": 2, "local-steps": 2})
    grid = InlineGrid(app, config, 2)
    strategy = APSB(clock=VirtualClock(), delays=DelayModel(np.array([1.0, 2.0])))
    with pytest.raises(CapabilityError, match="local-steps.*asyncfl.client.register"):
        strategy.start(grid, arrays_to_record(load_task(config).initial_arrays(0)),
                       num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))


class EvaluationRecordingGrid(InlineGrid):
    """The inline runtime (random 64-bit node ids, as Flower's), keeping the evaluate
    messages pushed."""

    def push_messages(self, messages):
        messages = list(messages)
        self.evaluated = getattr(self, "evaluated", []) + [
            m.metadata.dst_node_id for m in messages if m.metadata.message_type == "evaluate"]
        return super().push_messages(messages)


@pytest.mark.parametrize("name", NAMES)
def test_federated_evaluation_reaches_nodes_with_64_bit_ids(name):
    """Every strategy's federated evaluation goes to real node ids (some above 2**63: numpy
    would round them as floats) and comes back with the sampled nodes' metrics."""
    settings = {"strategy": name, "num-clients": 6, "local-steps": 2, "batch-size": 16,
                "concurrency": 3, "buffer-size": 2, "fraction-evaluate": 0.5}
    if name == "running-mean":
        settings["task"] = "mean"
    config = validate_run_config(settings)
    grid = EvaluationRecordingGrid(app, config, 6)
    assert any(node >= 2**63 for node in grid.contexts)
    registered = REGISTRY[name]
    strategy = registered.cls(clock=VirtualClock(), seed=3,
                              delays=DelayModel(np.array([1, 1.3, 2, 3.5, 1.1, 0.9])),
                              **registered.settings(config))
    result = start(strategy, config, load_task(config), grid)
    assert grid.evaluated and set(grid.evaluated) <= set(grid.contexts)
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2, 3, 4]
    for metrics in result.evaluate_metrics_clientapp.values():
        assert metrics and all(math.isfinite(v) for v in metrics.values())
