"""ESync: the state server's rule on hand-made tables, rounds in virtual time, baselines."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncfl
from asyncfl.config import validate_run_config
from asyncfl.engine.model_state import ModelState
from asyncfl.protocol import DELTA
from asyncfl.server_app import make_delays
from asyncfl.strategies.esync import ESyncRule, WorkerState, allocate_steps, step_allowed
from tests.helpers import read_rows


def table(*step_times):
    return [WorkerState(t) for t in step_times]


def test_equal_speeds_give_equal_steps():
    assert allocate_steps(table(2.0, 2.0, 2.0), eps=0.0) == [1, 1, 1]
    assert allocate_steps(table(2.0, 2.0, 2.0), eps=1.9) == [1, 1, 1]
    assert allocate_steps(table(2.0, 2.0, 2.0), eps=2.0) == [2, 2, 2]


@pytest.mark.parametrize(("eps", "expected"), [
    (0.0, [4, 2, 1]),  # 4 x 1 s and 2 x 2 s end exactly with the slowest's 4 s step
    (0.5, [4, 2, 1]),  # half a second of slack is not a whole step for anyone
    (1.0, [5, 2, 1]),  # a 1 s overrun lets the fastest do a fifth step, nobody else more
    (2.0, [6, 3, 1]),
    (4.0, [8, 4, 2]),  # a whole slow step of slack: the slowest does a second one
])
def test_speeds_1_2_4_give_steps_4_2_1_within_eps(eps, expected):
    assert allocate_steps(table(1.0, 2.0, 4.0), eps) == expected


def test_the_slowest_always_does_at_least_one_step():
    assert allocate_steps(table(0.1, 1000.0), eps=0.0) == [10000, 1]
    assert step_allowed(WorkerState(1e9), target=1.0, eps=0.0)  # no step done yet


def test_a_worker_whose_next_step_would_overrun_stops():
    assert step_allowed(WorkerState(1.0, steps_done=3, elapsed=3.0), target=4.0, eps=0.0)
    assert not step_allowed(WorkerState(1.0, steps_done=4, elapsed=4.0), target=4.0, eps=0.0)
    assert not step_allowed(WorkerState(1.5, steps_done=2, elapsed=3.0), target=4.0, eps=0.4)
    assert step_allowed(WorkerState(1.5, steps_done=2, elapsed=3.0), target=4.0, eps=0.5)
    assert not step_allowed(WorkerState(0.1, ready=True), target=4.0, eps=0.0)


def test_varying_step_times_are_followed_step_by_step():
    durations = {0: [1.0, 1.0, 3.0, 1.0], 1: [4.0, 4.0]}
    assert allocate_steps(table(1.0, 4.0), 0.0, lambda i, k: durations[i][k]) == [2, 1]


def test_the_slowest_runs_the_runs_local_steps_and_the_others_what_fits():
    assert allocate_steps(table(1.0, 2.0, 4.0), 0.0, base_steps=3) == [12, 6, 3]
    # with varying times the target is the largest sum of K first steps: 2 + 2 against 1 + 1
    durations = {0: [1.0, 1.0, 1.0, 5.0], 1: [2.0, 2.0, 2.0]}
    assert allocate_steps(table(1.0, 2.0), 0.0, lambda i, k: durations[i][k],
                          base_steps=2) == [3, 2]


@given(st.lists(st.floats(0.05, 20.0), min_size=1, max_size=12), st.floats(0.0, 5.0),
       st.integers(1, 6))
def test_constant_step_times_follow_the_closed_form(step_times, eps, base_steps):
    steps = allocate_steps(table(*step_times), eps, base_steps=base_steps)
    target = base_steps * max(step_times)
    for k, c in zip(steps, step_times, strict=True):
        assert k >= base_steps
        assert k * c <= (target + eps) * (1 + 1e-9)
        assert (k + 1) * c > (target + eps) * (1 - 1e-9)


def test_parameters_are_stepped_and_statistics_follow_the_one_rule():
    rule = ESyncRule(server_lr=0.5)
    global_arrays = {"w": np.zeros(2, np.float32), "bn.running_mean": np.ones(2, np.float32),
                     "bn.num_batches_tracked": np.array(10)}
    deltas = [{"w": np.full(2, 2.0, np.float32), "bn.running_mean": np.full(2, 1.0, np.float32),
               "bn.num_batches_tracked": np.array(4)},
              {"w": np.full(2, 4.0, np.float32), "bn.running_mean": np.full(2, 3.0, np.float32),
               "bn.num_batches_tracked": np.array(4)}]
    state = ModelState(global_arrays)
    for delta, examples in zip(deltas, [3.0, 1.0], strict=True):
        state.add(delta, DELTA, None, examples)
    parameters = rule.combine(state.parameters(global_arrays),
                              [state.parameters(d) for d in deltas], [3.0, 1.0])
    new = state.new_version(global_arrays, parameters)
    assert new["w"].tolist() == [1.5, 1.5]  # 0 + 0.5 * mean(2, 4): example counts ignored
    assert new["bn.running_mean"].tolist() == [2.5, 2.5]  # 1 + (3 * 1 + 1 * 3) / 4, no lr
    assert new["bn.num_batches_tracked"].dtype == np.int64
    assert int(new["bn.num_batches_tracked"]) == 14


def test_workers_finish_within_one_of_their_own_steps_of_each_other(out):
    kw = dict(strategy="esync", num_clients=4, delay_profile="1,2,4,8", delay_jitter=0.3,
              esync_eps=0.25, num_server_rounds=5, batch_size=16, lr=0.1)
    result = asyncfl.simulate(run_name="esync-jitter", **kw, **out)
    delays = make_delays(validate_run_config({k.replace("_", "-"): v for k, v in kw.items()}))
    events = read_rows(result.output_dir / "events.csv")
    for version in range(1, 6):
        rows = [r for r in events if r["version_apply"] == str(version)]
        assert len(rows) == 4
        finish = {int(r["client"]): float(r["virtual_time"]) for r in rows}
        latest = max(finish.values())
        for r in rows:
            client, steps = int(r["client"]), int(r["steps"])
            times = delays.step_times_of_task(client, version - 1, steps + 1)
            assert float(r["duration"]) == pytest.approx(times[:steps].sum())
            # it stopped because one more of its own steps would have overrun
            assert latest - finish[client] <= times[steps] + 0.25 + 1e-9
    steps = [r["steps"] for r in read_rows(result.output_dir / "esync_state.csv")]
    assert len(steps) == 20


def test_esync_reaches_the_target_before_ssgd(out):
    kw = dict(num_clients=4, delay_profile="1,2,4,8", num_server_rounds=1000, time_budget=400,
              lr=0.1, batch_size=16, eval_every=1, target_accuracy=0.8, **out)
    esync = asyncfl.simulate(strategy="esync", run_name="esync", **kw)
    ssgd = asyncfl.simulate(strategy="ssgd", run_name="ssgd", **kw)
    reached = esync.summary["time_to_target_accuracy"]
    assert reached is not None
    assert ssgd.summary["time_to_target_accuracy"] is None or (
        reached < ssgd.summary["time_to_target_accuracy"])
    # both synchronous: 8 s rounds; ESync packs 8 + 4 + 2 + 1 steps into each, SSGD 4
    assert esync.summary["final_version"] == ssgd.summary["final_version"] == 50


def test_wall_clock_probes_then_allocates_from_measured_step_times(out):
    """Per-step sleeps 1:8:40 apart, so that the order of the measured times (sleep plus
    what a loaded machine adds, 3:3:1 seen at 0.01/0.02/0.08 s under load 11) is robust."""
    result = asyncfl.simulate(strategy="esync", num_clients=3, delay_profile="0.005,0.04,0.2",
                              clock="wall", num_server_rounds=3, batch_size=16,
                              run_name="esync-wall", **out)
    state = read_rows(result.output_dir / "esync_state.csv")
    first = [int(r["steps"]) for r in state if r["round"] == "1"]
    later = [int(r["steps"]) for r in state if r["round"] == "3"]
    assert first == [1, 1, 1]
    assert later[0] > later[1] > later[2] == 1
    assert math.isclose(float([r for r in state if r["round"] == "3"][2]["step_time"]), 0.2,
                        rel_tol=0.5)
