"""MIFA: the latest delta of every client, averaged over all of them each round."""

import sys
from pathlib import Path

import numpy as np
import pytest

import asyncfl
from asyncfl.protocol import record_to_arrays
from asyncfl.strategies import MIFA, FedAvg
from asyncfl.strategies.mifa import MIFARule
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin_quickstart"
sys.path.insert(0, str(EXAMPLE))

from plugin_quickstart.client_app import app as quickstart_app  # noqa: E402
from plugin_quickstart.server_app import initial_model  # noqa: E402


def test_a_silent_client_keeps_pulling_with_its_last_delta():
    rule = MIFARule(server_lr=1.0, num_clients=3)
    w = {"x": np.array([0.0, 0.0])}
    w = rule.combine(w, [{"x": np.array([3.0, 0.0])}, {"x": np.array([0.0, 3.0])}], [1, 1],
                     clients=[0, 1])
    np.testing.assert_array_equal(w["x"], [1.0, 1.0])  # (3 + 0 + 0) / 3, (0 + 3 + 0) / 3
    w = rule.combine(w, [{"x": np.array([0.0, 6.0])}], [1], clients=[2])
    # client 0 and 1 are remembered: (3 + 0 + 0) / 3, (0 + 3 + 6) / 3
    np.testing.assert_array_equal(w["x"], [2.0, 4.0])


def test_with_every_client_every_round_and_equal_data_it_is_fedavg():
    """4 nodes of 300 examples each, all in every round: the mean of the deltas is FedAvg's
    example-weighted mean of the models (to float32 rounding)."""
    train = {"lr": 0.05, "local-steps": 4}
    from flwr.app import ConfigRecord

    runs = [strategy(fraction_evaluate=0.0).start(
        InlineGrid(quickstart_app, {}, 4), initial_model(), num_rounds=4,
        train_config=ConfigRecord(train)) for strategy in (MIFA, FedAvg)]
    a, b = (record_to_arrays(r.arrays) for r in runs)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_clients_that_come_and_go_all_stay_in_the_average(out):
    result = asyncfl.simulate(strategy="mifa", num_clients=8, num_server_rounds=15,
                              local_steps=2, batch_size=16, availability="exponential",
                              availability_on=20.0, availability_off=20.0,
                              delay_profile="1,2,3,4", run_name="mifa", **out)
    rows = read_rows(result.output_dir / "events.csv")
    per_round = {}
    for row in rows:
        if not row["rejected"]:
            per_round.setdefault(row["version_apply"], set()).add(row["client"])
    assert any(len(c) < 8 for c in per_round.values())  # rounds missed some clients
    assert len(set().union(*per_round.values())) >= 6  # most were heard from at least once
    assert result.summary["final_version"] == 15
    evals = read_rows(result.output_dir / "evals.csv")
    assert float(evals[-1]["loss"]) < float(evals[0]["loss"])


def test_bad_server_lr_names_the_argument():
    with pytest.raises((TypeError, ValueError), match="server_lr"):
        MIFA(server_lr=-1.0)
