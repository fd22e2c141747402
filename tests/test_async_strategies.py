import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import asyncfl
from asyncfl.config import validate_run_config
from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.engine.utils import task_seed
from asyncfl.server_app import make_delays
from asyncfl.strategies import FedAsync, FedBuff, constant, hinge, polynomial
from asyncfl.tasks import TrainSettings, load_task
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows


def test_staleness_functions():
    assert [constant(t) for t in (0, 5)] == [1.0, 1.0]
    assert polynomial(0, 0.5) == 1.0 and polynomial(3, 0.5) == pytest.approx(0.5)
    assert hinge(4, a=2.0, b=4) == 1.0 and hinge(6, a=2.0, b=4) == pytest.approx(1 / 5)


def test_running_mean_is_the_mean_of_every_value_received(out):
    result = asyncfl.simulate(strategy="running-mean", task="mean", num_clients=20,
                              num_server_rounds=300, delay_dist="exponential",
                              run_name="rm", **out)
    values = load_task(result.config).values
    events = read_rows(result.output_dir / "events.csv")
    received = np.array([values[int(r["client"])] for r in events], dtype=np.float64)
    independent = np.cumsum(received) / np.arange(1, len(received) + 1)
    evals = read_rows(result.output_dir / "evals.csv")
    estimates = np.array([float(r["estimate"]) for r in evals[1:]])
    assert [int(r["version"]) for r in evals[1:]] == list(range(1, 301))
    np.testing.assert_array_equal(estimates, independent)


def test_fedbuff_k1_m1_constant_lr1_is_sequential_sgd(out):
    kw = dict(strategy="fedbuff", num_clients=5, num_server_rounds=12, buffer_size=1,
              concurrency=1, staleness="constant", server_lr=1.0, local_steps=3,
              batch_size=8, lr=0.1, seed=3)
    result = asyncfl.simulate(run_name="fb-seq", **kw, **out)
    events = read_rows(result.output_dir / "events.csv")
    assert [int(r["staleness"]) for r in events] == [0] * 12
    task = load_task(result.config)
    w = task.initial_arrays(3)
    for version, row in enumerate(events):
        client = int(row["client"])
        settings = TrainSettings(lr=0.1, local_steps=3, batch_size=8, returns="weights",
                                 seed=task_seed(3, version, client))
        w = task.train(w, client, settings).weights
    final = result.final_arrays()
    for key in w:
        np.testing.assert_allclose(final[key], w[key], rtol=1e-6, atol=1e-7)


plain_app = ClientApp()


@plain_app.train()
def plain_train(msg: Message, context: Context) -> Message:
    """Flower-style ClientApp, no asyncfl inside: returns its id + the model's first entry."""
    pid = int(context.node_config["partition-id"])
    (w,) = msg.content["arrays"].to_numpy_ndarrays()
    out = np.full_like(w, 10.0 * (pid + 1)) + 0.5 * w
    return Message(RecordDict({"arrays": ArrayRecord([out]),
                               "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


def run_plain(strategy, n=3, versions=6):
    grid = InlineGrid(plain_app, {}, n)
    return grid, strategy.start(grid, ArrayRecord([np.zeros(2, dtype=np.float64)]),
                                num_rounds=versions)


def test_fedasync_with_a_1_returns_the_newest_client_model():
    strategy = FedAsync(mixing=1.0, staleness=constant, clock=VirtualClock(),
                        delays=DelayModel(np.array([1.0, 1.7, 2.9])))
    _, result = run_plain(strategy)
    last = strategy.recorder.events[-1]
    # the newest client model is 10 (c + 1) + 0.5 w_start, w_start the model it started from
    starts = {0: 0.0}
    for row in strategy.recorder.events[:-1]:
        starts[row["version_apply"]] = 10.0 * (row["client"] + 1) + 0.5 * starts[
            row["version_dispatch"]]
    expected = 10.0 * (last["client"] + 1) + 0.5 * starts[last["version_dispatch"]]
    assert result.arrays.to_numpy_ndarrays()[0].tolist() == [expected, expected]


def test_fedbuff_runs_with_a_plain_flower_client_app():
    """Swap FedAvg for FedBuff in a ServerApp whose ClientApp knows nothing of asyncfl."""
    strategy = FedBuff(buffer_size=2, concurrency=2, staleness=constant)
    _, result = run_plain(strategy, n=3, versions=4)
    events = strategy.recorder.events
    assert len(events) == 8 and {row["client"] for row in events} <= {0, 1, 2}
    # wall clock, one-by-one inline replies: check the rule on the recorded sequence
    w, deltas, models = 0.0, [], {0: 0.0}
    for row in events:
        client_model = 10.0 * (row["client"] + 1) + 0.5 * models[row["version_dispatch"]]
        deltas.append(client_model - models[row["version_dispatch"]])
        if len(deltas) == 2:
            w += sum(deltas) / 2
            deltas = []
            models[row["version_apply"]] = w
    assert result.arrays.to_numpy_ndarrays()[0] == pytest.approx([w, w])


def test_fedbuff_staleness_settles_at_m_over_k(out):
    """Equal speeds, M = 8 in flight, K = 4: every wave of 8 arrivals lands at one instant;
    arrival j of a wave started from version (j + 1) // K and lands at (M + j) // K, so the
    staleness is M/K = 2, except 1 for each K-th arrival: mean (M - 1) / K = 1.75."""
    result = asyncfl.simulate(strategy="fedbuff", task="mean", num_clients=8, concurrency=8,
                              buffer_size=4, num_server_rounds=40, delay_dist="constant",
                              run_name="settle", **out)
    staleness = [int(r["staleness"]) for r in read_rows(result.output_dir / "events.csv")]
    assert staleness[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert staleness[8:] == [2, 2, 2, 1] * ((len(staleness) - 8) // 4)
    assert np.mean(staleness[8:]) == pytest.approx((8 - 1) / 4)


def test_fast_clients_report_more_often(out):
    """All clients always busy, no jitter: client i has reported floor(T / c_i) times by the
    virtual time T of the last update."""
    kw = dict(strategy="running-mean", task="mean", num_clients=30, num_server_rounds=2000,
              delay_dist="exponential", local_steps=1, eval_every=500)
    result = asyncfl.simulate(run_name="counts", **kw, **out)
    events = read_rows(result.output_dir / "events.csv")
    counts = np.bincount([int(r["client"]) for r in events], minlength=30)
    step_times = make_delays(validate_run_config({k.replace("_", "-"): v
                                                  for k, v in kw.items()})).step_times
    end = float(events[-1]["virtual_time"])
    assert counts.tolist() == [math.floor(end / c + 1e-9) for c in step_times]
    assert counts[np.argmin(step_times)] > 5 * counts[np.argmax(step_times)]


def test_concurrency_above_num_clients_is_rejected():
    with pytest.raises(ValueError, match="concurrency"):
        asyncfl.simulate(strategy="fedbuff", num_clients=4, concurrency=5)


def test_wall_clock_async_records_both_clocks(out):
    result = asyncfl.simulate(strategy="fedasync", task="mean", num_clients=4,
                              num_server_rounds=8, clock="wall", delay_dist="constant",
                              delay_mean=0.005, local_steps=1, run_name="wall-async", **out)
    events = read_rows(result.output_dir / "events.csv")
    assert len(events) == 8
    virtual = [float(r["virtual_time"]) for r in events]
    wall = [float(r["wall_time"]) for r in events]
    assert virtual[0] == pytest.approx(0.005) and all(w >= 0.005 for w in wall)
    assert wall == sorted(wall)


def test_fedbuff_reaches_fedavg_final_accuracy_sooner_in_virtual_time(out):
    """50 clients, Dirichlet 0.5, exponential speeds: FedAvg waits for stragglers each round;
    FedBuff with the same 10 updates per version does not."""
    task = dict(task="digits", num_clients=50, partition="dirichlet", alpha=0.5,
                delay_dist="exponential", **out)
    fedavg = asyncfl.simulate(strategy="fedavg", fraction=0.2, num_server_rounds=15,
                              run_name="tta-fedavg", **task)
    fedbuff = asyncfl.simulate(strategy="fedbuff", buffer_size=10, concurrency=10,
                               num_server_rounds=30, run_name="tta-fedbuff", **task)
    target = fedavg.summary["accuracy"]
    assert target > 0.5  # FedAvg has learned something worth reaching
    curve = [(float(r["virtual_time"]), float(r["accuracy"]))
             for r in read_rows(fedbuff.output_dir / "evals.csv")]
    reached = next(t for t, acc in curve if acc >= target)
    assert reached < fedavg.summary["virtual_time"] / 2


class SlowNodeGrid(InlineGrid):
    """Node of client 0 declares its own slowdown in its node config."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        first = min(self.contexts)
        self.contexts[first].node_config["step-delay"] = 0.05


def test_a_node_declared_step_delay_is_slept_in_wall_clock_mode(out):
    result = asyncfl.simulate(grid_class=SlowNodeGrid, strategy="fedasync", task="mean",
                              num_clients=2, num_server_rounds=6, clock="wall",
                              delay_dist="constant", delay_mean=0.001, local_steps=1,
                              run_name="slow-node", **out)
    events = read_rows(result.output_dir / "events.csv")
    # client 0 sleeps 50 ms per task instead of 1 ms: at least 6 x 50 ms passed in total
    assert result.summary["wall_time"] >= 0.05 * sum(r["client"] == "0" for r in events)
    assert {r["client"] for r in events} == {"0", "1"}


def test_a_trace_of_constant_step_times_replays_like_the_same_profile(tmp_path, out):
    trace = tmp_path / "trace.csv"
    trace.write_text("client,step_time\n0,1.0\n1,3.0\n0,1.0\n")
    kw = dict(strategy="fedbuff", task="mean", num_clients=4, concurrency=3, buffer_size=2,
              num_server_rounds=12, local_steps=2, **out)
    traced = asyncfl.simulate(delay_dist="trace", delay_trace=str(trace), run_name="tr", **kw)
    profiled = asyncfl.simulate(delay_profile="1,3,1,3", run_name="pr", **kw)
    drop = ("wall_time",)
    events = read_rows(traced.output_dir / "events.csv", drop)
    assert len(events) == 24
    assert events == read_rows(profiled.output_dir / "events.csv", drop)


def test_a_wall_clock_run_replays_in_virtual_time_from_its_events(out):
    """The measured duration of each client's t-th task becomes the virtual duration of its
    t-th task when the wall-clock run's events.csv is the trace."""
    kw = dict(strategy="fedasync", task="mean", num_clients=3, concurrency=3,
              num_server_rounds=9, local_steps=2, **out)
    wall = asyncfl.simulate(clock="wall", delay_profile="0.01,0.02,0.04", run_name="w", **kw)
    replay = asyncfl.simulate(delay_dist="trace",
                              delay_trace=str(wall.output_dir / "events.csv"),
                              run_name="r", **kw)

    def durations(result):
        by_client: dict[str, list[float]] = {}
        for row in read_rows(result.output_dir / "events.csv"):
            by_client.setdefault(row["client"], []).append(float(row["duration"]))
        return by_client

    measured, replayed = durations(wall), durations(replay)
    assert set(replayed) == {"0", "1", "2"}
    for client, times in replayed.items():
        n = min(len(times), len(measured[client]))
        assert times[:n] == pytest.approx(measured[client][:n], rel=1e-12)
    # the measured times include the injected sleeps: 2 steps of 0.01 / 0.02 / 0.04 s
    assert all(d >= 2 * s for d, s in zip((min(measured[c]) for c in "012"),
                                          (0.01, 0.02, 0.04), strict=True))
