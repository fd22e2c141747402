import numpy as np
import pytest

from asyncfl.engine.delays import (
    NORMAL_FLOOR,
    DelayModel,
    draw_step_times,
    profile_step_times,
    read_trace,
)

N = 200_000


@pytest.mark.parametrize("dist", ["normal", "exponential", "uniform", "lognormal", "constant"])
def test_same_seed_same_speeds_other_seed_other_speeds(dist):
    kw = dict(mean=2.0, std=0.5, low=1.0, high=3.0)
    a = draw_step_times(dist, 50, seed=7, **kw)
    assert np.array_equal(a, draw_step_times(dist, 50, seed=7, **kw))
    if dist != "constant":
        assert not np.array_equal(a, draw_step_times(dist, 50, seed=8, **kw))


@pytest.mark.parametrize(
    ("dist", "kw", "mean", "std"),
    [
        ("normal", dict(mean=2.0, std=0.3), 2.0, 0.3),
        ("exponential", dict(mean=1.5), 1.5, 1.5),
        ("uniform", dict(low=1.0, high=4.0), 2.5, 3.0 / np.sqrt(12)),
        ("lognormal", dict(mean=2.0, std=1.0), 2.0, 1.0),
        ("constant", dict(mean=0.7), 0.7, 0.0),
    ],
)
def test_sample_moments_match_parameters(dist, kw, mean, std):
    x = draw_step_times(dist, N, seed=1, **kw)
    # standard error of the mean is std / sqrt(N) ~ 0.002 * std: 5 standard errors
    assert abs(x.mean() - mean) <= 5 * std / np.sqrt(N) + 1e-12
    assert abs(x.std() - std) <= 0.01 * std + 1e-12
    assert (x > 0).all()


def test_normal_is_clipped_to_stay_positive():
    x = draw_step_times("normal", N, seed=2, mean=1.0, std=2.0)
    assert x.min() == pytest.approx(NORMAL_FLOOR)
    assert (x >= NORMAL_FLOOR).all()


def test_uniform_stays_within_bounds():
    x = draw_step_times("uniform", N, seed=3, low=0.5, high=0.75)
    assert x.min() >= 0.5 and x.max() < 0.75


def test_profile_is_assigned_in_order_and_cycled():
    assert profile_step_times([1, 2, 4, 8], 6).tolist() == [1, 2, 4, 8, 1, 2]


def test_task_time_is_steps_times_step_time_plus_communication():
    model = DelayModel(np.array([0.5, 2.0]), latency=0.1, bandwidth=1000.0)
    assert model.task_time(1, 3, 0, 250, 250) == pytest.approx(3 * 2.0 + 2 * 0.1 + 0.5)
    assert model.task_time(0, 0, 0, 0, 0) == pytest.approx(0.2)


def test_jitter_has_mean_one_the_given_spread_and_is_reproducible():
    model = DelayModel(np.array([1.0]), seed=5, jitter=0.3)
    f = model.jitter_factors(0, 0, N)
    assert abs(f.mean() - 1.0) < 5 * 0.3 / np.sqrt(N)
    assert abs(f.std() - 0.3) < 0.01
    assert model.compute_time(0, 10, 4) == model.compute_time(0, 10, 4)
    assert model.compute_time(0, 10, 4) != model.compute_time(0, 10, 5)
    assert DelayModel(np.array([1.0])).compute_time(0, 10, 0) == 10.0


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_a_trace_gives_each_task_its_recorded_step_time(tmp_path):
    # duration + steps (as in events.csv); rejected rows and zero-step rows are skipped
    trace = read_trace(write_csv(tmp_path / "t.csv", ["client", "duration", "steps", "rejected"], [
        (1, 6.0, 2, ""), (0, 1.0, 1, ""), (1, 9.0, 3, "nan"), (1, 4.0, 1, ""), (0, 0.0, 0, ""),
    ]))
    assert [t.tolist() for t in trace] == [[1.0], [3.0, 4.0]]
    model = DelayModel.from_trace(trace, 3, jitter=0.0)
    # client 2 replays traced client 0 (cycled); tasks cycle over the client's records
    assert [model.compute_time(1, 2, t) for t in range(3)] == [6.0, 8.0, 6.0]
    assert model.compute_time(2, 5, 7) == 5.0
    assert model.step_times.tolist() == [1.0, 3.5, 1.0]
    assert model.step_times_of_task(1, 1, 2).tolist() == [4.0, 4.0]


@pytest.mark.parametrize(("header", "rows", "message"), [
    (["node", "step_time"], [(0, 1.0)], "needs a 'client' column"),
    (["client", "step_time"], [(0, "fast")], "line 2: not a number"),
    (["client", "step_time"], [(0, 1.0), (1, -2.0)], "line 3: per-step time -2.0"),
    (["client", "step_time"], [], "no rows"),
])
def test_a_bad_trace_is_refused_with_the_line_and_the_reason(tmp_path, header, rows, message):
    with pytest.raises(ValueError, match=message):
        read_trace(write_csv(tmp_path / "t.csv", header, rows))
    with pytest.raises(ValueError, match="delay-trace: cannot read"):
        read_trace(tmp_path / "missing.csv")
