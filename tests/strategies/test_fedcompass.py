"""FedCompass: the scheduler's step counts and groups by hand, the server's step by hand, equal
speeds = FedAvg, and runs that replay and resume exactly."""

import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

import asyncfl
from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.protocol import record_to_arrays
from asyncfl.strategies import FedAvg, FedCompass
from asyncfl.strategies.fedcompass import LATE, CompassScheduler, FedCompassRule
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin_quickstart"
sys.path.insert(0, str(EXAMPLE))

from plugin_quickstart.client_app import app as quickstart_app  # noqa: E402
from plugin_quickstart.server_app import initial_model  # noqa: E402


def back(scheduler, client, now, step_time):
    """What `CompassTasks.finished` does when a task comes back."""
    scheduler.observe(client, step_time)
    scheduler.arrived(client, now, ok=True)


def test_groups_and_steps_by_hand():
    """Three clients at 0.5, 1 and 2 s a step, Q_max 4, Q_min 1, lambda 1.5."""
    s = CompassScheduler(q_max=4, q_min=1, latest_factor=1.5, speed_momentum=0.5)
    assert s.assign([0, 1, 2], now=0.0) == {0: 4, 1: 4, 2: 4}  # no speed known: one group
    back(s, 2, 2.0, 0.5)  # the first back sets T = 2, L = 0 + 1.5 * 2 = 3
    assert (s.groups[0].expected, s.groups[0].latest) == (2.0, 3.0)
    assert s.waiting(2) and s.due(2.0) is None and s.next_deadline() == 3.0
    assert s.due(3.0) == 0 and not s.waiting(2)  # L came: aggregated with whoever is back
    assert s.assign([2], now=3.0) == {2: 4}  # nothing open: a new group, T = 5, L = 6
    assert (s.groups[1].expected, s.groups[1].latest) == (5.0, 6.0)
    back(s, 0, 4.0, 1.0)  # group 0 was aggregated: late
    assert s.placement[0] == LATE and not s.waiting(0)
    assert s.assign([0], now=4.0) == {0: 1}  # floor((5 - 4) / 1) = 1 step joins group 1
    back(s, 2, 5.0, 0.5)
    back(s, 0, 5.0, 1.0)
    assert s.due(5.0) == 1  # everyone back before L
    # fastest first: 2 opens group 2 (T = 7, L = 8) and 0 joins it with floor(2 / 1) steps
    assert s.assign([0, 2], now=5.0) == {2: 4, 0: 2}
    assert list(s.assign([0], now=5.0)) == [0] and s.groups[2].pending == [2, 0, 0]


def test_a_client_too_slow_for_any_group_opens_one_after_the_next_latest_time():
    s = CompassScheduler(q_max=4, q_min=2, latest_factor=1.5, speed_momentum=1.0)
    s.speed.update({0: 0.5, 1: 2.0})
    assert s.assign([0], now=5.0) == {0: 4}  # T = 7, L = 8
    # 1 reaches group 0 with floor((7 - 5) / 2) = 1 < Q_min steps: it opens a group that
    # lands one fastest-member task (0.5 * 4) after L = 8: floor((10 - 5) / 2) = 2 steps
    assert s.assign([1], now=5.0) == {1: 2}
    assert (s.groups[1].expected, s.groups[1].latest) == (9.0, 11.0)


def test_the_speed_is_an_exponential_average_and_lost_tasks_leave_their_group():
    s = CompassScheduler(q_max=4, q_min=1, latest_factor=1.5, speed_momentum=0.25)
    s.assign([0, 1], now=0.0)
    back(s, 0, 4.0, 1.0)
    s.observe(0, 3.0)
    assert s.speed[0] == 0.75 * 1.0 + 0.25 * 3.0
    s.arrived(1, 6.0, ok=False)  # lost: not waited for, no update
    assert 1 not in s.placement and s.due(6.0) == 0


def test_the_server_step_by_hand():
    """w + sum alpha s(tau) / N Delta_i over the group's and the late deltas."""
    scheduler = CompassScheduler(4, 1, 1.5, 0.9)
    rule = FedCompassRule(scheduler, 0.5, lambda tau: 1 / (1 + tau), num_clients=4)
    rule.version = 3
    scheduler.placement.update({0: 7, 1: 7, 2: LATE})
    w = {"x": np.array([1.0, 2.0], dtype=np.float32)}
    assert rule.fold(w, {"x": np.array([2.0, 0.0])}, 10, 0, 0) is None
    assert rule.fold(w, {"x": np.array([0.0, 4.0])}, 10, 1, 1) is None
    assert rule.fold(w, {"x": np.array([4.0, 0.0])}, 10, 3, 2) is None
    new = rule.aggregate(w, 7)
    # shares 0.5/4 * (1, 1/2, 1/4): x0 = 1 + 2/8 + 0 + 4/32, x1 = 2 + 0 + 4/16 + 0
    np.testing.assert_allclose(new["x"], [1.375, 2.25])
    assert new["x"].dtype == np.float32 and rule.version == 4 and not rule.buffers
    assert rule.aggregate(new, 7) is None  # nothing buffered: no new version


def test_with_equal_speeds_and_data_it_is_fedavg():
    """4 nodes of 300 examples, equal speeds on the virtual clock (with a wall clock who is
    late depends on the machine's load): every round is one group of all four, and with
    alpha = 1 and s = 1 the step is FedAvg's average (to float32 rounding)."""
    train = ConfigRecord({"lr": 0.05, "local-steps": 4})
    timing = {"clock": VirtualClock(), "delays": DelayModel(np.ones(4)),
              "fraction_evaluate": 0.0}
    runs = [strategy.start(InlineGrid(quickstart_app, {}, 4), initial_model(), num_rounds=4,
                           train_config=train)
            for strategy in (FedCompass(mixing=1.0, staleness="constant", **timing),
                             FedAvg(**timing))]
    a, b = (record_to_arrays(r.arrays) for r in runs)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def grouped_run(out, name, **extra):
    kw = dict(strategy="fedcompass", num_clients=8, local_steps=6, batch_size=16,
              num_server_rounds=20, delay_profile="1,2,3,5", seed=3, run_name=name)
    return asyncfl.simulate(**{**kw, **extra}, **out)


def test_equal_speeds_give_every_client_q_max_steps_in_one_group_a_version(out):
    result = grouped_run(out, "equal", delay_profile="", delay_dist="constant")
    rows = read_rows(result.output_dir / "events.csv")
    assert {row["steps"] for row in rows} == {"6"}
    assert set(Counter(row["version_apply"] for row in rows).values()) == {8}
    assert {row["staleness"] for row in rows} == {"0"}


def test_unequal_speeds_arrive_in_groups_with_steps_by_speed(out):
    """Four speeds (1, 2, 3, 5 s a step), Q_max 6: once measured, a client mostly runs the
    steps that fit the fastest clients' 6 s, floor(6 / t) = 6, 3, 2, 1, and most versions
    aggregate several clients that arrived together."""
    result = grouped_run(out, "unequal")
    rows = read_rows(result.output_dir / "events.csv")
    steps = defaultdict(list)
    for row in rows:
        steps[int(row["client"]) % 4].append(int(row["steps"]))
    usual = {profile: Counter(s[1:]).most_common(1)[0][0] for profile, s in steps.items()}
    assert usual == {0: 6, 1: 3, 2: 2, 3: 1}
    per_version = Counter(row["version_apply"] for row in rows)
    assert sum(n >= 4 for n in per_version.values()) >= len(per_version) // 2
    assert result.summary["final_version"] == 20
    evals = read_rows(result.output_dir / "evals.csv")
    assert float(evals[-1]["accuracy"]) > float(evals[0]["accuracy"]) + 0.3


def test_jitter_makes_members_late_and_the_run_replays_byte_for_byte(out):
    """With 60% jitter some members miss their group's latest time (their updates wait for
    the next group), and the same seed gives the same events and model."""
    a, b = (grouped_run(out, f"jitter-{i}", delay_jitter=0.6) for i in range(2))
    rows = read_rows(a.output_dir / "events.csv", ("wall_time",))
    assert rows == read_rows(b.output_dir / "events.csv", ("wall_time",))
    assert any(int(row["staleness"]) > 0 for row in rows)
    x, y = a.final_arrays(), b.final_arrays()
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_clients_that_come_and_go_never_stall_it(out):
    result = grouped_run(out, "available", availability="exponential", availability_on=30.0,
                         availability_off=15.0)
    assert result.summary["final_version"] == 20
    assert result.summary["skipped_by_reason"]  # tasks were lost, and counted


@pytest.mark.parametrize("bad", [{"local_steps": 0}, {"compass_lambda": 0.5},
                                 {"compass_q_ratio": 0.0}])
def test_bad_settings_are_named_before_work_starts(out, bad):
    key = next(iter(bad)).replace("_", "-")
    with pytest.raises(ValueError, match=key):
        grouped_run(out, "bad", **bad)
