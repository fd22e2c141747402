"""One hostile client of four, for every registered strategy: the run finishes, the client is
named and counted, the global model stays finite and the honest clients' updates are applied."""

import logging

import numpy as np
import pytest

import asyncfl
from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.protocol import record_to_arrays
from asyncfl.strategies import REGISTRY
from tests.helpers import read_rows
from tests.hostile import HostileApp, hostile_grid

HOSTILE = 3
#: fault -> the reason its replies are skipped with
FAULTS = {"inf-version": "bad metric 'model-version'", "huge": "outlier update",
          "none": "error reply", "nan-metric": "bad metric 'train-loss'"}


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings():
    handler, logger = Lines(), logging.getLogger("flwr")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_one_hostile_client_of_four_is_named_counted_and_survived(out, warnings, strategy,
                                                                  fault):
    task = {"task": "mean"} if strategy == "running-mean" else {"batch_size": 16}
    # the hostile client is the slowest: its first reply is never the run's first (a model
    # that starts at zeros, the mean task's, has no scale to judge a first reply by)
    result = asyncfl.simulate(grid_class=hostile_grid(fault, HOSTILE), strategy=strategy,
                              num_clients=4, num_server_rounds=6, local_steps=2,
                              delay_profile="1,1.3,1.7,2.2", **task, **out)
    rows = read_rows(result.output_dir / "events.csv")
    rejected = [r for r in rows if r["rejected"]]
    applied = {int(r["client"]) for r in rows if not r["rejected"]}
    assert rejected and {int(r["client"]) for r in rejected} == {HOSTILE}
    assert all(r["rejected"].startswith(FAULTS[fault]) for r in rejected), rejected
    assert result.summary["skipped_by_reason"] == {FAULTS[fault]: len(rejected)}
    assert any(f"reply of client {HOSTILE} " in line and FAULTS[fault] in line
               for line in warnings)
    assert applied and HOSTILE not in applied and result.summary["updates"] >= 4
    assert all(np.isfinite(v).all() for v in result.final_arrays().values())
    assert result.summary["status"] == "finished"


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("strategy", ["fedavg", "fedbuff", "apsb"])
def test_a_plug_in_strategy_survives_a_hostile_client_app(strategy, fault):
    """The same through the plug-in path: a Flower app's own ClientApp (with asyncfl's
    helper), one node of four hostile."""
    from tests.test_flower_plugin import RecordingGrid, helped_app, initial, train_config

    grid = RecordingGrid(HostileApp(helped_app, HOSTILE, fault))
    chosen = REGISTRY[strategy].cls(fraction_evaluate=0.0, clock=VirtualClock(),
                                    delays=DelayModel(np.array([1.0, 1.3, 1.7, 2.2])))
    result = chosen.start(grid, initial(), num_rounds=6, train_config=train_config())
    recorder = chosen.recorder
    assert list(recorder.failures) == [FAULTS[fault]]
    assert {row["client"] for row in recorder.events if row["rejected"]} == {HOSTILE}
    assert {row["client"] for row in recorder.applied()} == {0, 1, 2}
    assert all(np.isfinite(v).all() for v in record_to_arrays(result.arrays).values())
