"""Clients that come and go (`availability`): no task goes to an offline client, a task whose
client leaves is lost (counted as unavailable, never applied, no fault), a run in which
nobody is online moves its clock on instead of spinning, and replays are identical."""

import math

import numpy as np
import pytest

import asyncfl
from asyncfl.config import ConfigError, validate_run_config
from asyncfl.engine.availability import OnOffWindows, TraceWindows
from tests.helpers import read_rows

RUN = dict(num_clients=8, num_server_rounds=20, local_steps=2, batch_size=16,
           delay_profile="1,1.5,2,3,5,8,1.2,2.5", availability="exponential",
           availability_on=20.0, availability_off=10.0)


def test_on_off_windows_alternate_and_answer_consistently():
    windows = OnOffWindows(20.0, 10.0, seed=3)
    for client in range(5):
        t = 0.0
        for _ in range(50):
            back = windows.next_online(client, t)
            assert windows.online(client, back)
            leaves = windows.next_offline(client, back)
            assert leaves > back and not windows.online(client, leaves)
            assert all(windows.online(client, x) for x in np.linspace(back, leaves, 7)[:-1])
            t = leaves
    again = OnOffWindows(20.0, 10.0, seed=3)
    assert [again.next_offline(2, 0.0), again.next_online(2, 100.0)] == [
        windows.next_offline(2, 0.0), windows.next_online(2, 100.0)]


def test_long_run_online_share_is_the_stationary_one():
    windows = OnOffWindows(20.0, 10.0, seed=0)
    grid = np.linspace(0, 20_000, 20_001)
    share = np.mean([windows.online(c, t) for c in range(20) for t in grid[::10]])
    assert share == pytest.approx(2 / 3, abs=0.03)


def test_trace_windows_merge_and_cycle(tmp_path):
    path = tmp_path / "windows.csv"
    path.write_text("client,start,end\n0,0,10\n0,5,20\n0,30,40\n1,100,200\n")
    windows = TraceWindows(path)
    assert windows.online(0, 15) and not windows.online(0, 25)
    assert windows.next_offline(0, 1) == 20 and windows.next_online(0, 21) == 30
    assert windows.next_online(0, 41) == math.inf  # gone for good
    assert windows.online(2, 5) and windows.online(3, 150)  # clients 2, 3 replay 0, 1


def events_and_windows(result):
    rows = read_rows(result.output_dir / "events.csv")
    return rows, OnOffWindows(RUN["availability_on"], RUN["availability_off"],
                              result.config["seed"])


@pytest.mark.parametrize("strategy", ["fedbuff", "fedasync", "fedavg", "ca2fl"])
def test_tasks_go_only_to_online_clients_and_a_client_that_leaves_loses_its_task(out,
                                                                              strategy):
    result = asyncfl.simulate(strategy=strategy, run_name=strategy, buffer_size=3,
                              concurrency=4, **RUN, **out)
    rows, windows = events_and_windows(result)
    lost = [r for r in rows if r["rejected"].startswith("unavailable")]
    applied = [r for r in rows if not r["rejected"]]
    assert lost and applied
    for row in rows:
        client, sent = int(row["client"]), float(row["dispatch_time"])
        assert windows.online(client, sent), row  # never sent to an offline client
        finish = float(row["virtual_time"])
        if row in lost:  # it came back when its client left
            assert finish == windows.next_offline(client, sent), row
        else:  # it finished while its client stayed online
            assert windows.next_offline(client, sent) >= finish, row
    assert result.summary["skipped_by_reason"].get("unavailable") == len(lost)
    assert result.summary["dropped_clients"] == []  # leaving is not a fault
    final = result.final_arrays()
    assert all(np.isfinite(v).all() for v in final.values())


def test_a_replay_is_identical(out):
    runs = [asyncfl.simulate(strategy="fedbuff", run_name=f"r{i}", **RUN, **out)
            for i in range(2)]
    rows = [[{k: v for k, v in r.items() if k != "wall_time"}
             for r in read_rows(run.output_dir / "events.csv")] for run in runs]
    assert rows[0] == rows[1]
    a, b = (run.final_arrays() for run in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["fedavg", "fedbuff"])
def test_nobody_online_for_a_long_stretch_moves_the_clock_on(out, tmp_path, strategy):
    """Every client offline from 5 s to 100,000 s: the run jumps over the gap."""
    path = tmp_path / "gap.csv"
    path.write_text("client,start,end\n" + "".join(
        f"{c},0,5\n{c},100000,1000000000\n" for c in range(4)))
    result = asyncfl.simulate(strategy=strategy, num_clients=4, num_server_rounds=6,
                              buffer_size=2, local_steps=2, delay_dist="constant",
                              delay_mean=1.0, availability="trace",
                              availability_trace=str(path), run_name=f"gap-{strategy}", **out)
    rows = read_rows(result.output_dir / "events.csv")
    assert result.summary["final_version"] == 6
    assert any(float(r["dispatch_time"]) >= 100000 for r in rows)
    assert not any(5 < float(r["dispatch_time"]) < 100000 for r in rows)


def test_availability_is_checked_before_the_run():
    with pytest.raises(ConfigError, match="availability"):
        validate_run_config({"availability": "sometimes"})
    with pytest.raises(ConfigError, match="clock"):
        validate_run_config({"availability": "exponential", "clock": "wall"})
    with pytest.raises(ConfigError, match="availability-trace"):
        validate_run_config({"availability": "trace"})
    with pytest.raises(ConfigError, match="availability-on"):
        validate_run_config({"availability-on": 0.0})


@pytest.mark.parametrize("strategy", ["apsb", "esync", "asgd", "fedsgd"])
def test_every_kind_of_task_survives_clients_leaving(out, strategy):
    """Segmented tasks (APSB), planned steps (ESync), one-step tasks: lost ones are counted,
    the run reaches its last version."""
    result = asyncfl.simulate(strategy=strategy, run_name=strategy, **RUN, **out)
    assert result.summary["final_version"] == RUN["num_server_rounds"]
    assert set(result.summary["skipped_by_reason"]) <= {"unavailable"}


def test_the_plug_in_argument_needs_a_virtual_clock():
    from asyncfl.engine import WallClock
    from asyncfl.strategies import FedBuff

    with pytest.raises(ValueError, match="VirtualClock"):
        FedBuff(clock=WallClock(), availability=OnOffWindows(10.0, 5.0))


def test_poisson_arrivals_join_one_by_one_and_then_follow_their_windows():
    from asyncfl.engine.availability import Arrivals

    joins = Arrivals(rate=0.5, initial=2, seed=1)
    times = [joins.arrival(c) for c in range(10)]
    assert times[:2] == [0.0, 0.0] and times[2:] == sorted(times[2:]) and times[2] > 0
    assert all(not joins.online(c, t - 1e-9) and joins.online(c, t) for c, t in
               enumerate(times) if t > 0)
    assert joins.next_online(5, 0.0) == times[5] and joins.next_offline(5, times[5]) == math.inf
    windows = OnOffWindows(20.0, 10.0, seed=1)
    both = Arrivals(rate=0.5, initial=2, seed=1, then=windows)
    assert both.next_online(5, 0.0) == windows.next_online(5, times[5])


@pytest.mark.parametrize("strategy", ["fedbuff", "fedavg"])
def test_clients_that_join_later_get_tasks_only_once_they_are_there(out, strategy):
    from asyncfl.engine.availability import Arrivals

    result = asyncfl.simulate(strategy=strategy, num_clients=8, num_server_rounds=12,
                              buffer_size=2, local_steps=2, delay_dist="constant",
                              delay_mean=1.0, arrival_rate=0.2, clients_at_start=2,
                              run_name=f"join-{strategy}", **out)
    joins = Arrivals(0.2, 2, result.config["seed"])
    rows = read_rows(result.output_dir / "events.csv")
    for row in rows:
        assert float(row["dispatch_time"]) >= joins.arrival(int(row["client"])), row
    assert {r["client"] for r in rows} > {"0", "1"}  # latecomers trained too
    assert result.summary["final_version"] == 12


def test_the_results_hold_every_clients_online_windows(out):
    result = asyncfl.simulate(strategy="fedbuff", run_name="windows", **RUN, **out)
    _, windows = events_and_windows(result)
    rows = read_rows(result.output_dir / "availability.csv")
    end = result.summary["virtual_time"]
    assert {r["client"] for r in rows} == {str(c) for c in range(8)}
    for row in rows:
        client, start, stop = int(row["client"]), float(row["start"]), float(row["end"])
        assert windows.online(client, start) and start < stop <= end
        assert stop == end or windows.next_offline(client, start) == stop
