"""Faulty clients, reply validation, fuzzed run configs and aggregation properties."""

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, MetricRecord
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncfl
from asyncfl.client_app import _faulty_clients
from asyncfl.config import DEFAULTS, SETTINGS_BY_KEY, ConfigError, validate_run_config
from asyncfl.engine import event_loop
from asyncfl.engine.dispatch import MAX_BACKOFF, backoff_seconds
from asyncfl.engine.utils import check_reply, update_norm
from asyncfl.strategies import FedAvg, NoClientLeftError, ReplyGuard
from asyncfl.strategies.blocks import weighted_average
from asyncfl.tools.inline import InlineGrid
from tests.helpers import read_rows
from tests.test_async_strategies import plain_app


@pytest.mark.parametrize(("strategy", "extra", "versions"), [
    ("fedavg", {}, 15),
    ("fedbuff", {"concurrency": 5, "buffer_size": 3}, 40),
])
def test_a_fifth_of_faulty_clients_is_survived_and_reported(out, strategy, extra, versions):
    common = dict(strategy=strategy, num_clients=20, num_server_rounds=versions,
                  local_steps=5, batch_size=16, lr=0.1, **extra, **out)
    clean = asyncfl.simulate(run_name=f"{strategy}-clean", **common)
    faulty = asyncfl.simulate(run_name=f"{strategy}-faulty", fault_fraction=0.2, **common)
    s = faulty.summary
    bad = set(_faulty_clients(0, 20, 0.2))
    assert len(bad) == 4
    assert set(s["skipped_by_reason"]) == {"error reply", "no reply", "not finite",
                                           "wrong shape"}
    rejected = {int(r["client"]) for r in read_rows(faulty.output_dir / "events.csv")
                if r["rejected"]}
    applied = {int(r["client"]) for r in read_rows(faulty.output_dir / "events.csv")
               if not r["rejected"]}
    assert rejected == bad and not (applied & bad)
    assert set(s["dropped_clients"]) <= bad
    if strategy == "fedavg":
        assert set(s["dropped_clients"]) == bad  # three faults in a row each
    assert all(np.isfinite(v).all() for v in faulty.final_arrays().values())
    assert s["accuracy"] >= clean.summary["accuracy"] - 0.05


def reference():
    return {"w": np.zeros((2, 2), np.float32)}


@pytest.mark.parametrize(("arrays", "metrics", "kwargs", "reason"), [
    ({"w": np.zeros((2, 2), np.float32)}, {"num-examples": 0}, {}, "bad num-examples"),
    ({"w": np.zeros((2, 2), np.float32)}, {"num-examples": 50}, {"max_examples": 40},
     "more than the client holds"),
    ({"w": np.zeros((2, 2), np.float32)}, {"num-examples": 5, "model-version": 3},
     {"version_sent": 4}, "wrong model version"),
    ({"w": np.zeros((2, 2), np.float64)}, {"num-examples": 5}, {}, "wrong dtype"),
    ({"w": np.zeros((2, 3), np.float32)}, {"num-examples": 5}, {}, "wrong shape"),
    ({"v": np.zeros((2, 2), np.float32)}, {"num-examples": 5}, {}, "wrong arrays"),
    ({"w": np.full((2, 2), np.inf, np.float32)}, {"num-examples": 5}, {}, "not finite"),
])
def test_replies_that_must_not_touch_the_model(arrays, metrics, kwargs, reason):
    assert reason in check_reply(arrays, MetricRecord(metrics), reference(), **kwargs)
    assert check_reply(reference(), MetricRecord({"num-examples": 5, "model-version": 4}),
                       reference(), version_sent=4) == ""


class DuplicatingGrid(InlineGrid):
    """Every reply arrives twice, plus one for a message nobody sent."""

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        if replies:
            stray = replies[0].__class__(replies[0].content, reply_to=replies[0])
            stray.metadata.__dict__["_reply_to_message_id"] = "no-such-message"
        return replies + replies + ([stray] if replies else [])


def test_duplicate_and_unknown_replies_are_ignored_and_counted(out):
    kw = dict(strategy="fedbuff", num_clients=4, num_server_rounds=6, buffer_size=2,
              local_steps=2, **out)
    plain = asyncfl.simulate(run_name="plain", **kw)
    noisy = asyncfl.simulate(grid_class=DuplicatingGrid, run_name="noisy", **kw)
    assert noisy.summary["ignored_replies"] > 0
    a, b = plain.final_arrays(), noisy.final_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("action", ["clip", "reject"])
def test_update_norm_bound(action):
    strategy = FedAvg(guard=ReplyGuard(norm_bound=1.0, norm_action=action))
    grid = InlineGrid(plain_app, {}, 3)
    start = np.zeros(4, dtype=np.float64)
    result = strategy.start(grid, ArrayRecord([start]), num_rounds=1)
    new = result.arrays.to_numpy_ndarrays()[0]
    if action == "clip":  # every client's update clipped to norm 1, then averaged
        assert update_norm({"0": new - start}) == pytest.approx(1.0)
        assert strategy.recorder.failures == {}
    else:
        assert np.array_equal(new, start)
        assert strategy.recorder.failures == {"update too large": 3}


# --- fuzzed run configs: a clear error naming the key, or a valid config ---------------

VALUES = st.one_of(st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(SETTINGS_BY_KEY)), st.text(max_size=8)),
                       VALUES, max_size=4))
def test_fuzzed_run_config_is_valid_or_a_clear_error(overrides):
    try:
        config = validate_run_config(overrides)
    except ConfigError as err:
        message = str(err)
        assert any(f"'{key}'" in message or key in message for key in overrides) or (
            "delay-low" in message)
    else:
        assert set(config) == set(DEFAULTS)
        for key, value in config.items():
            assert isinstance(value, SETTINGS_BY_KEY[key].type)


# --- aggregation rules --------------------------------------------------------------

ARRAYS = st.integers(1, 6).flatmap(lambda n: st.lists(
    st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=n, max_size=n))


@given(ARRAYS, st.data())
def test_weighted_average_of_identical_updates_returns_the_update(rows, data):
    update = np.array(rows[0], dtype=np.float64)
    weights = data.draw(st.lists(st.floats(0.01, 100), min_size=len(rows),
                                 max_size=len(rows)))
    result = weighted_average([{"w": update}] * len(rows), weights)
    np.testing.assert_allclose(result["w"], update, rtol=1e-12, atol=1e-9)


@given(ARRAYS, st.data())
def test_weighted_average_weights_sum_to_one_and_order_does_not_matter(rows, data):
    models = [{"w": np.array(r, dtype=np.float64)} for r in rows]
    weights = data.draw(st.lists(st.floats(0.01, 100), min_size=len(rows),
                                 max_size=len(rows)))
    order = data.draw(st.permutations(range(len(rows))))
    a = weighted_average(models, weights)["w"]
    b = weighted_average([models[i] for i in order], [weights[i] for i in order])["w"]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # convex combination: the result stays within the inputs' range
    stacked = np.stack([m["w"] for m in models])
    assert (a >= stacked.min(0) - 1e-9).all() and (a <= stacked.max(0) + 1e-9).all()
    ones = weighted_average([{"w": np.ones(1)}] * len(rows), weights)["w"]
    assert ones[0] == pytest.approx(1.0)  # the normalized weights sum to one


def test_backoff_doubles_with_faults_in_a_row_up_to_its_cap():
    assert [backoff_seconds(0.5, k) for k in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(2.0, 10) == MAX_BACKOFF
    assert backoff_seconds(0.0, 3) == 0.0


class FlakyGrid(InlineGrid):
    """The node of client 0 fails its first two train tasks (it is down), then recovers."""

    failures = 2

    def _execute(self, message):
        context = self.contexts[message.metadata.dst_node_id]
        if (message.metadata.message_type == "train" and self.failures
                and context.node_config["partition-id"] == 0):
            self.failures -= 1
            return Message(Error(0, "node down"), reply_to=message)
        return super()._execute(message)


def wall_clock_mean_run(grid_class, num_clients: int, backoff: float, name: str, out: dict):
    return asyncfl.simulate(grid_class=grid_class, strategy="fedasync", task="mean",
                            num_clients=num_clients, num_server_rounds=3, clock="wall",
                            delay_dist="constant", delay_mean=0.001, local_steps=1,
                            retry_backoff=backoff, max_faults=0, run_name=name, **out)


def test_a_failed_client_rests_before_its_next_task_and_is_used_again(out):
    result = wall_clock_mean_run(FlakyGrid, 1, 0.2, "flaky", out)
    events = read_rows(result.output_dir / "events.csv")
    assert [bool(r["rejected"]) for r in events] == [True, True, False, False, False]
    # each task is sent only once the client has rested 0.2 s, then 0.4 s, after a failure
    for failed, rest in ((events[0], 0.2), (events[1], 0.4)):
        nxt = events[events.index(failed) + 1]
        assert float(nxt["dispatch_time"]) >= float(failed["wall_time"]) + rest
    assert result.summary["skipped_by_reason"] == {"error reply": 2}


class FlakyAndSlowGrid(FlakyGrid):
    """Client 0 fails once and is fast; client 1's replies come only 1 s after they were sent
    (pulling never blocks, as with a real SuperLink)."""

    failures = 1

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        self.sent_at = {**getattr(self, "sent_at", {}), **dict.fromkeys(ids, time.monotonic())}
        return ids

    def pull_messages(self, message_ids):
        def due(message_id: str) -> bool:
            node = self._pending[message_id].metadata.dst_node_id
            return (self.contexts[node].node_config["partition-id"] != 1
                    or time.monotonic() - self.sent_at[message_id] >= 1.0)

        return super().pull_messages([i for i in message_ids if i in self._pending and due(i)])


def test_a_rested_client_is_sent_its_next_task_without_waiting_for_other_replies(out):
    result = wall_clock_mean_run(FlakyAndSlowGrid, 2, 0.1, "rested", out)
    events = read_rows(result.output_dir / "events.csv")
    # client 0 is sent a task again 0.1 s after its failure, not when client 1's reply lands
    # (1 s after it was sent): all three versions come from client 0 before that
    assert [(r["client"], bool(r["rejected"])) for r in events] == [
        ("0", True), ("0", False), ("0", False), ("0", False)]
    assert float(events[1]["dispatch_time"]) >= float(events[0]["wall_time"]) + 0.1
    assert float(events[-1]["wall_time"]) < 1.0


class DeadGrid(FlakyGrid):
    failures = 5


@pytest.mark.parametrize("strategy", ["fedasync", "fedavg"])
def test_a_run_where_no_reply_can_succeed_stops_with_a_clear_error(out, strategy):
    with pytest.raises(NoClientLeftError, match=r"every client was dropped after 2 faulty "
                       r"replies in a row and no update was ever applied; replies failed "
                       r"with: error reply \(2\)"):
        asyncfl.simulate(grid_class=DeadGrid, strategy=strategy, task="mean", num_clients=1,
                         num_server_rounds=3, max_faults=2, local_steps=1,
                         run_name="all-dropped", **out)


@pytest.mark.parametrize("strategy", ["fedavg", "fedbuff"])
def test_silent_clients_in_virtual_time_cost_no_waiting(out, monkeypatch, strategy):
    """The run that used to block for an hour per silent task: 10 clients, 4 of them silent,
    default reply timeout. In virtual time the loop never has to wait for them: it never
    sleeps, and every silent task is counted as one without a reply."""
    def no_sleep(seconds):
        raise AssertionError(f"the event loop waited ({seconds} s) for a reply")

    monkeypatch.setattr(event_loop.time, "sleep", no_sleep)
    result = asyncfl.simulate(strategy=strategy, num_clients=10, fault_fraction=0.4,
                              fault_kinds="silent", num_server_rounds=3, local_steps=2,
                              max_faults=0, **out)
    s = result.summary
    rejected = [r for r in read_rows(result.output_dir / "events.csv") if r["rejected"]]
    assert rejected and {int(r["client"]) for r in rejected} <= set(_faulty_clients(0, 10, 0.4))
    assert s["skipped_by_reason"] == {"no reply": len(rejected)}
    assert s["updates"] > 0 and all(np.isfinite(v).all() for v in result.final_arrays().values())
