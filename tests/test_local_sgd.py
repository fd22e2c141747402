"""LSGD / SSGD / A-LSGD / ASGD / APSB: equivalences, the broadcast, communication."""

import dataclasses

import numpy as np
import pytest

import asyncfl
from asyncfl.config import ConfigError
from asyncfl.protocol import record_to_arrays
from asyncfl.strategies import APSB, REGISTRY
from asyncfl.tasks import TrainSettings, load_task
from tests.helpers import read_rows

COMM = ("wall_time", "comm_messages", "comm_bytes")


def test_apsb_k1_equals_alsgd_k1_equals_asgd(out):
    kw = dict(num_clients=5, num_server_rounds=25, delay_dist="exponential", delay_jitter=0.3,
              lr=0.1, batch_size=8, local_steps=1, seed=4, **out)
    runs = {name: asyncfl.simulate(strategy=name, run_name=name, **kw)
            for name in ("apsb", "alsgd", "asgd")}
    arrays = {name: run.final_arrays() for name, run in runs.items()}
    for name in ("alsgd", "asgd"):
        assert all(np.array_equal(arrays["apsb"][k], arrays[name][k]) for k in arrays[name])
        # identical events; only the communication columns differ (APSB broadcasts)
        assert (read_rows(runs["apsb"].output_dir / "events.csv", COMM)
                == read_rows(runs[name].output_dir / "events.csv", COMM))
    assert runs["alsgd"].summary["comm_bytes_down"] < runs["apsb"].summary["comm_bytes_down"]


def test_fedbuff_with_a_buffer_of_one_is_alsgd(out):
    """At their defaults, FedBuff with K = 1 and constant weights steps by K / M = 1 / M times
    a client's delta, A-LSGD by lr / M times its accumulated gradient: the same step, as a
    delta (w_local - w) or as -lr x the gradients' sum, so equal up to rounding. The panel's
    digits-10 rows of the two agreed to the last printed digit (docs/defaults.md)."""
    kw = dict(num_clients=6, num_server_rounds=40, local_steps=3, batch_size=8, lr=0.1,
              seed=2, **out)
    fedbuff = asyncfl.simulate(strategy="fedbuff", buffer_size=1, staleness="constant",
                               run_name="fedbuff", **kw)
    alsgd = asyncfl.simulate(strategy="alsgd", run_name="alsgd", **kw)
    a, b = fedbuff.final_arrays(), alsgd.final_arrays()
    assert a.keys() == b.keys()
    assert all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    columns = ("client", "version_dispatch", "version_apply", "staleness", "virtual_time", "steps")
    assert ([{c: r[c] for c in columns} for r in read_rows(fedbuff.output_dir / "events.csv")]
            == [{c: r[c] for c in columns} for r in read_rows(alsgd.output_dir / "events.csv")])


def test_lsgd_equals_fedavg_with_the_same_steps_and_everyone(out):
    # 1437 training digits / 3 clients: equal partitions, so equal weights
    kw = dict(num_clients=3, num_server_rounds=4, local_steps=5, batch_size=16, lr=0.1, **out)
    lsgd = asyncfl.simulate(strategy="lsgd", run_name="lsgd", **kw)
    fedavg = asyncfl.simulate(strategy="fedavg", fraction=1.0, run_name="fedavg", **kw)
    assert {len(p) for p in load_task(lsgd.config).partitions} == {479}
    a, b = lsgd.final_arrays(), fedavg.final_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (read_rows(lsgd.output_dir / "events.csv", ("wall_time",))
            == read_rows(fedavg.output_dir / "events.csv", ("wall_time",)))


def test_ssgd_is_lsgd_with_one_step(out):
    kw = dict(num_clients=4, num_server_rounds=3, batch_size=8, lr=0.1, **out)
    ssgd = asyncfl.simulate(strategy="ssgd", local_steps=7, run_name="ssgd", **kw)
    lsgd = asyncfl.simulate(strategy="lsgd", local_steps=1, run_name="lsgd1", **kw)
    a, b = ssgd.final_arrays(), lsgd.final_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert {r["steps"] for r in read_rows(ssgd.output_dir / "events.csv")} == {"1"}


class RecordingAPSB(APSB):
    """APSB that remembers every global model, segment and push, for an independent replay
    (spies on its task sender, its dispatcher and its rule)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.models, self.segments, self.pushes = {}, [], []

    def tasks(self, parts):
        instruction, fold = parts.dispatcher.instruction, self.rule.fold

        def recorded_instruction(arrays, version, client, model_bytes, **kwargs):
            self.segments.append((client, dict(kwargs["extra"]), version, arrays is not None))
            return instruction(arrays, version, client, model_bytes, **kwargs)

        def recorded_fold(global_arrays, update, num_examples, staleness, client):
            self.pushes.append({k: v.copy() for k, v in update.items()})
            return fold(global_arrays, update, num_examples, staleness, client)

        parts.dispatcher.instruction, self.rule.fold = recorded_instruction, recorded_fold
        tasks = super().tasks(parts)
        new_version = tasks.new_version

        def recorded_version(version, arrays):
            new_version(version, arrays)
            self.models[version] = record_to_arrays(arrays)

        tasks.new_version = recorded_version
        return tasks


def test_a_broadcast_resets_the_worker_mid_task(out, monkeypatch):
    created = []

    def recording(*args, **kwargs):
        created.append(RecordingAPSB(*args, **kwargs))
        return created[-1]

    monkeypatch.setitem(REGISTRY, "apsb", dataclasses.replace(REGISTRY["apsb"], cls=recording))
    result = asyncfl.simulate(strategy="apsb", num_clients=3, num_server_rounds=9,
                              delay_profile="1,1.3,3.1", local_steps=4, batch_size=8, lr=0.1,
                              seed=2, run_name="apsb-reset", **out)
    strategy = created[0]
    strategy.models[0] = load_task(result.config).initial_arrays(2)
    task = load_task(result.config)
    events = read_rows(result.output_dir / "events.csv")
    # the slowest worker (client 2) starts at version 0 and is reset mid-task
    segments = [s for s in strategy.segments if s[0] == 2]
    first_task = segments[: next(i for i, s in enumerate(segments) if s[1]["final"]) + 1]
    resets = [s for s in first_task if s[1]["segment-start"] > 0 and s[3]]
    assert resets, "no broadcast reached the slow worker inside its task"

    def replay(adopt: bool) -> dict:
        local, total = strategy.models[first_task[0][2]], None
        for _, extra, version, has_model in first_task:
            if has_model and adopt:
                local = strategy.models[version]
            settings = TrainSettings(lr=0.1, batch_size=8, returns="gradient",
                                     seed=extra["task-seed"], skip_steps=extra["segment-start"],
                                     local_steps=extra["segment-steps"])
            outcome = task.train(local, 2, settings)
            local = outcome.weights
            total = outcome.gradient if total is None else {
                k: total[k] + v for k, v in outcome.gradient.items()}
        return total

    pushed = strategy.pushes[[int(r["client"]) for r in events].index(2)]
    with_reset, without = replay(adopt=True), replay(adopt=False)
    for key in pushed:
        np.testing.assert_allclose(pushed[key], with_reset[key], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(with_reset[k], without[k]) for k in pushed)


def test_communication_falls_as_one_over_k(out):
    total_iterations = 96
    bytes_up, comm = {}, {}
    for k in (1, 2, 4, 8):
        run = asyncfl.simulate(strategy="apsb", num_clients=4, local_steps=k, batch_size=8,
                               num_server_rounds=total_iterations // k, run_name=f"k{k}", **out)
        bytes_up[k] = run.summary["comm_bytes_up"]
        comm[k] = run.summary["comm_bytes_up"] + run.summary["comm_bytes_down"]
    # one push of a model-sized gradient per K iterations
    assert len({bytes_up[k] * k for k in bytes_up}) == 1
    # a push and one broadcast (a single send all 4 workers receive) per version, plus the
    # initial model to each worker: 2 models a version and 4 at the start
    per_version = (comm[1] - comm[2]) / (total_iterations // 2)
    for k in comm:
        assert comm[k] == pytest.approx(per_version * (total_iterations // k + 2), rel=1e-9)
    assert per_version == 2 * bytes_up[1] / total_iterations


def test_local_steps_must_be_set_for_k_iteration_strategies():
    with pytest.raises(ConfigError, match="local-steps"):
        asyncfl.simulate(strategy="apsb", local_steps=0)


def test_apsb_with_wall_clock_checks_in_every_chunk(out):
    result = asyncfl.simulate(strategy="apsb", num_clients=3, num_server_rounds=6,
                              local_steps=4, apsb_chunk=2, clock="wall", delay_dist="constant",
                              delay_mean=0.001, batch_size=8, run_name="apsb-wall", **out)
    assert result.summary["updates"] == 6
    # two segments per task: one instruction per segment, one push per task
    assert result.summary["messages_sent"] >= 2 * 6
    assert result.summary["comm_messages_up"] == 6
