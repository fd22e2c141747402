"""Ringmaster's staleness cutoff (`staleness-cutoff` R): updates R or more versions old are
discarded, not counted against their client, and the client is sent the newest model."""

import numpy as np
import pytest

import asyncfl
from asyncfl.config import ConfigError, validate_run_config
from asyncfl.strategies import ASGD
from tests.helpers import read_rows

RUN = dict(num_clients=6, num_server_rounds=30, local_steps=2, batch_size=16,
           delay_profile="1,1.5,2,3,5,9")


def virtual_rows(result):
    return [{k: v for k, v in r.items() if k != "wall_time"}
            for r in read_rows(result.output_dir / "events.csv")]


@pytest.mark.parametrize("strategy", ["asgd", "alsgd", "fedasync"])
def test_a_cutoff_no_update_reaches_is_the_plain_algorithm(out, strategy):
    """R = infinity (larger than any staleness) gives the plain run, bit for bit."""
    plain = asyncfl.simulate(strategy=strategy, run_name="plain", **RUN, **out)
    cut = asyncfl.simulate(strategy=strategy, staleness_cutoff=10**9, run_name="cut", **RUN,
                           **out)
    assert virtual_rows(cut) == virtual_rows(plain)
    a, b = plain.final_arrays(), cut.final_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cutoff", [1, 3])
def test_updates_at_or_over_the_cutoff_are_discarded_and_their_clients_go_on(out, cutoff):
    result = asyncfl.simulate(strategy="asgd", staleness_cutoff=cutoff, run_name=f"r{cutoff}",
                              **RUN, **out)
    rows = read_rows(result.output_dir / "events.csv")
    applied = [r for r in rows if not r["rejected"]]
    stale = [r for r in rows if r["rejected"]]
    assert all(int(r["staleness"]) < cutoff for r in applied)
    assert stale and all(r["rejected"].startswith("stale") for r in stale)
    # the staleness of a discarded update: its arrival version minus its start version
    assert all(int(r["version_apply"]) - int(r["version_dispatch"]) >= cutoff for r in stale)
    assert result.summary["skipped_by_reason"] == {"stale": len(stale)}
    assert result.summary["dropped_clients"] == []  # stale is not a client's fault
    assert result.summary["final_version"] == 30 == len(applied)
    # the slowest client (9 s a step) is always too stale at R = 1 and never counts
    if cutoff == 1:
        assert "5" not in {r["client"] for r in applied}


def test_the_cutoff_is_checked_before_the_run():
    with pytest.raises(ConfigError, match="staleness-cutoff"):
        validate_run_config({"strategy": "fedavg", "staleness-cutoff": 3})
    with pytest.raises(ConfigError, match="staleness-cutoff"):
        validate_run_config({"strategy": "asgd", "staleness-cutoff": -1})
    with pytest.raises((TypeError, ValueError), match="staleness_cutoff"):
        ASGD(staleness_cutoff=1.5)
