"""Issue 26's cases at the reply guard and the runtimes' edges: malformed numbers, outlier
updates, replies that are not messages, and strategy arguments no reply fits."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.client import always_reply
from asyncfl.engine.evaluation import FederatedEvaluation
from asyncfl.engine.guard import DivergenceError, NoClientLeftError, ReplyGuard
from asyncfl.engine.utils import check_reply
from asyncfl.protocol import ARRAYS, arrays_to_record, reply_steps
from asyncfl.strategies import FedAvg, FedBuff, SettingError
from tests.test_flower_plugin import RecordingGrid, initial, train_config

W = {"w": np.ones((2, 2), np.float32)}


@pytest.fixture(autouse=True)
def task_identity():
    """Messages built outside a runtime need one (FLOWER_NOTES: testing without Ray)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"num-examples": 5, "model-version": math.inf}, "bad metric 'model-version'"),
    ({"num-examples": 5, "model-version": 1e300}, "wrong model version"),
    ({"num-examples": 5, "model-version": 2.5}, "bad metric 'model-version'"),
    ({"num-examples": 5, "model-version": [4]}, "bad metric 'model-version'"),
    ({"num-examples": [5]}, "bad num-examples"),
    ({"num-examples": math.inf}, "bad num-examples"),
    ({"num-examples": 5, "local-steps": math.inf}, "bad metric 'local-steps'"),
    ({"num-examples": 5, "local-steps": -1}, "bad metric 'local-steps'"),
    ({"num-examples": 5, "compute-time": math.nan}, "bad metric 'compute-time'"),
    ({"num-examples": 5, "train-loss": math.nan}, "bad metric 'train-loss'"),
    ({"num-examples": 5, "my-accuracy": -math.inf}, "bad metric 'my-accuracy'"),
    ({"num-examples": 5, "per-class": [1.0, math.nan]}, "bad metric 'per-class'"),
])
def test_every_malformed_number_is_a_reason_not_a_crash(metrics, reason):
    assert check_reply(W, MetricRecord(metrics), W, version_sent=4).startswith(reason)


def test_a_list_where_earlier_replies_sent_a_number_is_a_fault():
    shapes = {"train-loss": None, "per-class": 2}
    for metrics in ({"train-loss": [0.5]}, {"per-class": 0.5}, {"per-class": [0.1, 0.2, 0.3]}):
        reason = check_reply(W, MetricRecord({"num-examples": 5, **metrics}), W, shapes=shapes)
        assert reason.startswith(f"bad metric '{next(iter(metrics))}'")
    assert check_reply(W, MetricRecord({"num-examples": 5, "per-class": [1.0, 2.0]}), W,
                       shapes=shapes) == ""


def test_steps_a_reply_cannot_have_run_do_not_reach_the_clock():
    for steps in (math.inf, math.nan, -3, 2.5, 1e300):
        reply = Message(RecordDict({"m": MetricRecord({"local-steps": steps})}),
                        reply_to=instruction())
        assert reply_steps(reply, 7) == 7


def instruction():
    message = Message(RecordDict(), dst_node_id=100, message_type="train")
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def completion(arrays, client, tag=0, steps=1):
    """A finished task of `steps` local steps whose reply holds `arrays` (weights) and 10
    examples."""
    content = RecordDict({ARRAYS: arrays_to_record(arrays),
                          "metrics": MetricRecord({"num-examples": 10})})
    reply = Message(content, reply_to=instruction())
    return SimpleNamespace(failure_reason="", reply=reply, tag=tag, client=client,
                           planned_steps=steps)


def test_a_huge_update_is_an_outlier_counted_against_its_client():
    guard = ReplyGuard()
    guard.expect_model(W)
    # the very first replies: past the divergence limit on their own
    for huge in (W["w"] * 1e6, np.full((2, 2), 3e38, np.float32)):
        assert guard.check(completion({"w": huge}, 3), W).startswith("outlier update")
    for client in range(3):  # honest updates of norm 0.2, 0.4, 0.6
        step = np.full((2, 2), 0.1 * (client + 1), np.float32)
        assert not isinstance(guard.check(completion({"w": W["w"] + step}, client), W), str)
    # norm 100 > 100 x 0.56, the 90th percentile of 0.2, 0.4, 0.6
    reason = guard.check(completion({"w": W["w"] + 50.0}, 3), W)
    assert reason.startswith("outlier update: norm per local step 100 > 100 x the "
                             "90th percentile 0.56")
    assert guard.faults[3] == 3 and 3 in guard.dropped
    assert not isinstance(guard.check(completion({"w": W["w"] + 15.0}, 1), W), str)  # 30


def test_an_update_of_many_more_local_steps_is_judged_per_step():
    """ESync's fastest worker may be asked for a hundred times the steps of the slowest: its
    delta is that much larger and honest (it once stopped a run as an 'outlier')."""
    guard = ReplyGuard()
    guard.expect_model(W)
    for client in range(3):  # one step each, norm 0.2
        assert not isinstance(guard.check(completion({"w": W["w"] + 0.1}, client), W), str)
    long_task = completion({"w": W["w"] + 30.0}, 3, steps=150)  # norm 60: 0.4 a step
    assert not isinstance(guard.check(long_task, W), str)
    short_task = completion({"w": W["w"] + 30.0}, 4, steps=1)  # the same norm in one step
    assert guard.check(short_task, W).startswith("outlier update: norm per local step 60")


def test_honest_heavy_tailed_gradients_late_in_training_are_not_outliers():
    """Most batches fitted (tiny gradients), one in five holding a misclassified example
    (ten thousand times larger): the median would reject every large one and drop honest
    clients; the 90th percentile keeps them, and a x1e6 reply is still rejected."""
    guard = ReplyGuard()
    guard.expect_model(W)
    for i in range(50):
        size = 1.0 if i % 5 == 0 else 1e-4
        assert not isinstance(guard.check(completion({"w": W["w"] + size}, i % 10), W), str)
    assert not isinstance(guard.check(completion({"w": W["w"] + 2.0}, 0), W), str)
    assert guard.check(completion({"w": W["w"] + 1e6}, 1), W).startswith("outlier update")


def test_outliers_from_several_clients_in_a_row_blame_the_server():
    guard = ReplyGuard()
    guard.expect_model(W)
    for client in range(4):
        guard.check(completion({"w": W["w"] + 0.1}, client), W)
    guard.check(completion({"w": W["w"] + 1e5}, 0), W)
    with pytest.raises(DivergenceError, match=r"clients \[0, 1\] in a row were outliers.*"
                                              r"lower the server's step"):
        guard.check(completion({"w": W["w"] + 1e5}, 1), W)


def test_outlier_rejection_can_be_turned_off():
    guard = ReplyGuard(outlier_factor=0.0)
    guard.expect_model(W)
    assert not isinstance(guard.check(completion({"w": W["w"] * 1e6}, 0), W), str)
    with pytest.raises(ValueError, match="outlier_factor"):
        ReplyGuard(outlier_factor=0.5)


@pytest.mark.parametrize("returned", [None, "a string"])
def test_a_client_app_that_returns_no_message_is_an_error_reply_at_once(returned):
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context):
        return returned

    strategy = FedAvg(fraction_evaluate=0.0)
    with pytest.raises(NoClientLeftError, match=r"failed with: error reply \(12\)"):
        strategy.start(RecordingGrid(app), initial(), num_rounds=4, train_config=train_config())
    reasons = {r["rejected"] for r in strategy.recorder.events}
    assert reasons == {f"error reply: the ClientApp returned {type(returned).__name__}, "
                       "not a Message"}


def test_always_reply_makes_flowers_runtimes_answer_too():
    app = ClientApp(mods=[always_reply])

    @app.train()
    def train(msg: Message, context: Context):
        return None

    reply = app(instruction(), Context(1, 100, {}, RecordDict(), {}))
    assert reply.has_error() and "returned NoneType" in reply.error.reason


def test_a_weighting_key_no_reply_carries_is_a_setting_error():
    strategy = FedAvg(weighted_by_key="nokey", fraction_evaluate=0.0)
    grid = RecordingGrid()
    with pytest.raises(SettingError, match=r"weighted_by_key = 'nokey': no reply carries "
                                           r"this metric; the replies carried metrics "
                                           r"\['num-examples', 'train_loss'\]"):
        strategy.start(grid, initial(), num_rounds=3, train_config=train_config())
    assert len(grid.replies) == 4  # the first round's replies, no retries


def test_record_keys_the_client_app_does_not_read_are_a_setting_error():
    strategy = FedBuff(arrayrecord_key="weights", fraction_evaluate=0.0)
    with pytest.raises(SettingError, match=r"arrayrecord_key / configrecord_key = \('weights',"
                                           r" 'config'\): the ClientApp looked for record "
                                           r"'arrays'"):
        strategy.start(RecordingGrid(), initial(), num_rounds=3, train_config=train_config())


def test_federated_evaluation_never_averages_nan_or_inf():
    evaluation = FederatedEvaluation()
    replies = [Message(RecordDict({"m": MetricRecord({"num-examples": 10, "acc": acc})}),
                       reply_to=instruction()) for acc in (0.5, math.nan, math.inf, 0.7)]
    assert evaluation.aggregate_replies(1, replies)["acc"] == pytest.approx(0.6)
    assert evaluation.skipped == 2


@pytest.mark.parametrize(("profile", "reason"), [
    ("gpu-fast*1000000000", "lists 1,000,000,000 times; at most 100,000"),
    ("1,inf", "bad delay-profile entry 'inf'"),
    ("1,nan", "bad delay-profile entry 'nan'"),
    ("1e308,1e308", "bad delay-profile entry '1e308'"),
])
def test_delay_profiles_are_bounded_and_finite_before_any_work(profile, reason):
    from asyncfl.config import ConfigError, validate_run_config

    assert validate_run_config({"delay-profile": "1,2*99999"})  # the cap itself is allowed
    with pytest.raises(ConfigError, match=rf"run-config 'delay-profile' = .*{reason}"):
        validate_run_config({"delay-profile": profile})


def test_a_trace_time_too_large_to_add_up_is_refused(tmp_path):
    from asyncfl.engine.delays import read_trace

    trace = tmp_path / "trace.csv"
    trace.write_text("client,step_time\n0,1.0\n1,1e308\n")
    with pytest.raises(ValueError, match=r"line 3: per-step time 1e\+308 is not a number in "
                                         r"\(0, 1e\+09\] seconds"):
        read_trace(trace)


def test_a_query_answer_with_numbers_out_of_range_counts_as_no_answer():
    from asyncfl.server_app import discover_clients

    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        own = int(context.node_config["partition-id"])
        pid = math.inf if own == 1 else own
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid,
                                                            "num-examples": 5})}),
                       reply_to=msg)

    grid = RecordingGrid(app, num_nodes=3)
    assert discover_clients(grid, 3) == (sorted(grid.contexts), None)
