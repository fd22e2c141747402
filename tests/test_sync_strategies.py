import json
import random

import numpy as np
import pytest
from flwr.app import Message

import asyncfl
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows

SCENARIOS = {
    "a": dict(lr=0.01, num_clients=100, partition="iid", fraction=0.5),
    "b": dict(lr=0.1, num_clients=50, partition="pathological", classes_per_client=2,
              fraction=0.2),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fedsgd_gradients_and_weights_are_equivalent(scenario, out):
    runs = {
        name: asyncfl.simulate(strategy=name, num_server_rounds=5, seed=10, run_name=name,
                               **SCENARIOS[scenario], **out)
        for name in ("fedsgd", "fedsgd-weights")
    }
    grad, weights = (runs[n].output_dir for n in ("fedsgd", "fedsgd-weights"))
    # the same clients were sampled, in the same order, with the same data
    keep = ("version_apply", "client", "num_examples", "steps")
    events = [read_rows(d / "events.csv") for d in (grad, weights)]
    assert [{k: r[k] for k in keep} for r in events[0]] == [
        {k: r[k] for k in keep} for r in events[1]]
    evals = [read_rows(d / "evals.csv") for d in (grad, weights)]
    assert [r["version"] for r in evals[0]] == [str(v) for v in range(6)]
    for a, b in zip(evals[0], evals[1], strict=True):
        assert abs(float(a["accuracy"]) - float(b["accuracy"])) * 100 <= 0.02
    final = [runs[n].final_arrays() for n in ("fedsgd", "fedsgd-weights")]
    for key in final[0]:
        np.testing.assert_allclose(final[0][key], final[1][key], rtol=1e-5, atol=1e-6)
    # and training did move the model: the equivalence is not between two frozen models
    initial = runs["fedsgd"].final_arrays()
    assert float(evals[0][-1]["loss"]) < float(evals[0][0]["loss"])
    assert initial


def test_fedavg_reaches_90_percent_on_digits(out):
    result = asyncfl.simulate(strategy="fedavg", num_clients=10, num_server_rounds=10,
                              partition="iid", run_name="fedavg", **out)
    assert result.summary["accuracy"] >= 0.90


class ShuffledGrid(InlineGrid):
    """Replies come back late, a random few at a time, in random order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = random.Random(1234)
        self.pulls_without_reply = 0

    def pull_messages(self, message_ids):
        ready = [i for i in message_ids if i in self._pending]
        self.rng.shuffle(ready)
        if self.rng.random() < 0.5:
            self.pulls_without_reply += 1
            return []
        return super().pull_messages(ready[: self.rng.randint(1, 3)])


def test_virtual_time_order_does_not_depend_on_arrival_order(out):
    kw = dict(strategy="fedavg", num_clients=8, fraction=0.5, num_server_rounds=4,
              delay_dist="exponential", delay_jitter=0.2, local_steps=3, **out)
    plain = asyncfl.simulate(run_name="plain", **kw)
    shuffled = asyncfl.simulate(grid_class=ShuffledGrid, run_name="shuffled", **kw)
    drop = ("wall_time",)
    plain_events = read_rows(plain.output_dir / "events.csv", drop)
    assert plain_events == read_rows(shuffled.output_dir / "events.csv", drop)
    # applied in virtual finish order within each round
    for version in {r["version_apply"] for r in plain_events}:
        times = [float(r["virtual_time"]) for r in plain_events if r["version_apply"] == version]
        assert times == sorted(times)
    a, b = plain.final_arrays(), shuffled.final_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_round_lasts_as_long_as_its_slowest_client(out):
    result = asyncfl.simulate(strategy="fedavg", num_clients=4, num_server_rounds=2,
                              delay_profile="1,2,4,8", local_steps=5, comm_latency=0.5,
                              run_name="round-time", **out)
    evals = read_rows(result.output_dir / "evals.csv")
    # slowest client: 5 steps x 8 s + 2 x 0.5 s latency = 41 s per round
    assert [float(r["virtual_time"]) for r in evals] == [0.0, 41.0, 82.0]
    events = read_rows(result.output_dir / "events.csv")
    assert [r["client"] for r in events[:4]] == ["0", "1", "2", "3"]
    assert [float(r["virtual_time"]) for r in events[:4]] == [6.0, 11.0, 21.0, 41.0]


def test_results_folder_and_message_count(out):
    result = asyncfl.simulate(strategy="fedavg", num_clients=10, fraction=0.3,
                              num_server_rounds=3, eval_every=2, run_name="files", **out)
    names = {p.name for p in result.output_dir.iterdir()}
    assert {"events.csv", "evals.csv", "config.json", "summary.json", "accuracy.png",
            "final_model.npz"} <= names
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary == result.summary
    # 3 sampled clients per round: one instruction + one reply each
    assert summary["messages_sent"] == summary["replies_received"] == 9
    assert summary["messages"] == 18 and summary["updates"] == 9
    assert summary["bytes_up"] == summary["bytes_down"] > 0
    assert [r["version"] for r in read_rows(result.output_dir / "evals.csv")] == ["0", "2", "3"]
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["fraction"] == 0.3 and config["run-name"] == "files"


def test_mean_task_fedavg_with_everyone_gets_the_exact_mean(out):
    result = asyncfl.simulate(task="mean", strategy="fedavg", num_clients=100,
                              num_server_rounds=1, run_name="mean", **out)
    assert result.summary["abs-error"] < 1e-9


class FaultyGrid(InlineGrid):
    """Client 1 raises; client 2 answers with NaN weights."""

    def _execute(self, message: Message) -> Message:
        client = self.contexts[message.metadata.dst_node_id].node_config["partition-id"]
        if message.metadata.message_type != "train":
            return super()._execute(message)
        if client == 1:
            self.client_app = _Raising(self.client_app)
        reply = super()._execute(message)
        self.client_app = getattr(self.client_app, "inner", self.client_app)
        if client == 2 and not reply.has_error():
            arrays = reply.content["arrays"]
            first = next(iter(arrays))
            bad = arrays[first].numpy().copy()
            bad.flat[0] = np.nan
            from flwr.app import Array

            arrays[first] = Array(bad)
        return reply


class _Raising:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, message, context):
        raise RuntimeError("client crashed")


def test_failing_clients_are_skipped_counted_and_do_not_corrupt_the_model(out):
    result = asyncfl.simulate(grid_class=FaultyGrid, strategy="fedavg", num_clients=4,
                              num_server_rounds=3, run_name="faulty", **out)
    summary = result.summary
    assert summary["skipped_replies"] == 6
    assert summary["skipped_by_reason"] == {"error reply": 3, "not finite": 3}
    assert summary["updates"] == 6
    assert all(np.isfinite(v).all() for v in result.final_arrays().values())
    events = read_rows(result.output_dir / "events.csv")
    assert {r["client"] for r in events if not r["rejected"]} == {"0", "3"}
    rejected = {r["client"]: r["rejected"] for r in events if r["rejected"]}
    assert rejected["1"].startswith("error reply: RuntimeError: client crashed")
    assert "NaN or Inf" in rejected["2"]


def test_wall_clock_applies_in_arrival_order_and_sleeps_the_delay(out):
    result = asyncfl.simulate(strategy="fedavg", num_clients=3, num_server_rounds=2,
                              clock="wall", delay_dist="constant", delay_mean=0.01,
                              local_steps=2, run_name="wall", **out)
    events = read_rows(result.output_dir / "events.csv")
    assert len(events) == 6
    # inline runs clients one after another, so arrival order is client order
    assert [r["client"] for r in events] == ["0", "1", "2"] * 2
    assert result.summary["wall_time"] >= 6 * 2 * 0.01


def test_a_round_deadline_in_virtual_time_cuts_the_straggler_and_logs_it(out):
    # client 3 needs 2 x 10 s a task; the others 2 x 1 s; each round ends 5 s after it began
    kw = dict(strategy="fedavg", num_clients=4, num_server_rounds=5, local_steps=2,
              delay_profile="1,1,1,10", round_timeout=5.0, **out)
    result = asyncfl.simulate(max_faults=0, run_name="deadline", **kw)
    events = read_rows(result.output_dir / "events.csv")
    missed = [r for r in events if r["rejected"]]
    assert [r["client"] for r in missed] == ["3"] * 5
    assert all(r["rejected"] == "missed the round deadline (round-timeout)" for r in missed)
    assert [float(r["virtual_time"]) for r in missed] == [5.0, 10.0, 15.0, 20.0, 25.0]
    applied = [r for r in events if not r["rejected"]]
    assert [r["client"] for r in applied] == ["0", "1", "2"] * 5
    assert result.summary["virtual_time"] == 25.0
    assert result.summary["skipped_by_reason"] == {"missed the round deadline (round-timeout)": 5}
    # by default three misses in a row drop the straggler; later rounds last 2 s
    dropping = asyncfl.simulate(run_name="deadline-drop", **kw)
    assert dropping.summary["dropped_clients"] == [3]
    assert dropping.summary["virtual_time"] == 3 * 5.0 + 2 * 2.0


def test_a_round_deadline_on_the_wall_clock_goes_on_without_a_silent_client(out):
    # one client (drawn by the fault seed) never answers; without the deadline each round
    # would wait reply-timeout (60 s) for it
    result = asyncfl.simulate(strategy="fedavg", num_clients=4, num_server_rounds=3,
                              clock="wall", delay_dist="constant", delay_mean=0.001,
                              local_steps=2, fault_fraction=0.25, fault_kinds="silent",
                              round_timeout=0.5, reply_timeout=60.0, max_faults=0,
                              run_name="wall-deadline", **out)
    events = read_rows(result.output_dir / "events.csv")
    missed = [r["client"] for r in events if r["rejected"]]
    assert len(missed) == 3 and len(set(missed)) == 1
    others = [c for c in "0123" if c != missed[0]]
    assert [r["client"] for r in events if not r["rejected"]] == others * 3
    assert 3 * 0.5 <= result.summary["wall_time"] < 30
