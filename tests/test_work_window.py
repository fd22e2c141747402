"""TimelyFL's adaptive local work (`work-window` T): a client measured at t seconds a step is
sent min(K, max(1, floor(T / t))) steps; before its first reply, K."""

import math

import pytest

import asyncfl
from asyncfl.strategies import FedBuff
from tests.helpers import read_rows


@pytest.mark.parametrize("strategy", ["fedbuff", "ca2fl"])
def test_each_task_after_the_first_fits_the_window(out, strategy):
    speeds = [1.0, 2.0, 4.0, 8.0]
    result = asyncfl.simulate(strategy=strategy, num_clients=4, num_server_rounds=12,
                              buffer_size=2, local_steps=8, delay_dist="constant",
                              delay_profile=",".join(map(str, speeds)), work_window=8.0,
                              run_name=strategy, **out)
    rows = [r for r in read_rows(result.output_dir / "events.csv") if not r["rejected"]]
    seen = set()
    for row in sorted(rows, key=lambda r: float(r["dispatch_time"])):
        client, steps = int(row["client"]), int(row["steps"])
        expected = 8 if client not in seen else min(8, max(1, math.floor(8.0 / speeds[client])))
        assert steps == expected, row
        seen.add(client)
    # then every task takes about the window: 8 steps of 1 s, ..., 1 step of 8 s
    assert {float(r["duration"]) for r in rows if int(r["version_dispatch"]) > 2} <= {8.0}


def test_without_a_window_every_task_runs_the_local_steps(out):
    result = asyncfl.simulate(strategy="fedbuff", num_clients=4, num_server_rounds=6,
                              buffer_size=2, local_steps=8, delay_profile="1,2,4,8",
                              run_name="plain", **out)
    assert {r["steps"] for r in read_rows(result.output_dir / "events.csv")} == {"8"}


def test_a_window_needs_local_steps_and_a_number():
    with pytest.raises((TypeError, ValueError), match="work_window"):
        FedBuff(work_window=-1.0)
