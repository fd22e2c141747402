import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from asyncfl.engine import DelayModel, EventLoop, VirtualClock, WallClock
from asyncfl.engine.event_loop import (
    FIRST_REPLY_TIMEOUT,
    MIN_REPLY_TIMEOUT,
    REPLY_TIMEOUT_FACTOR,
)
from asyncfl.protocol import train_instruction
from asyncfl.strategies import FedAvg
from asyncfl.tools.inline import InlineGrid

plain_app = ClientApp()
CONFIG = ConfigRecord({"lr": 0.1})


@plain_app.train()
def plain_train(msg: Message, context: Context) -> Message:
    """A Flower-style ClientApp that knows nothing of asyncfl: adds its id, reports examples."""
    pid = int(context.node_config["partition-id"])
    arrays = [a + (pid + 1) for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": pid + 1})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}),
                   reply_to=msg)


class ReversedGrid(InlineGrid):
    def pull_messages(self, message_ids):
        return list(reversed(list(super().pull_messages(message_ids))))


def make_grid(grid_class=InlineGrid, n=4):
    return grid_class(plain_app, {}, n)


def test_ties_in_virtual_finish_time_are_broken_by_client_index():
    grid = make_grid(ReversedGrid)
    nodes = sorted(grid.get_node_ids())
    delays = DelayModel(np.array([2.0, 1.0, 2.0, 1.0]))
    loop = EventLoop(grid, VirtualClock(), delays)
    arrays = ArrayRecord([np.zeros(2, dtype=np.float32)])
    loop.send((train_instruction(arrays, CONFIG, nodes[c], "1"), c, 3, None)
              for c in (3, 2, 1, 0))
    done = loop.drain()
    assert [c.client for c in done] == [1, 3, 0, 2]
    assert [c.virtual_time for c in done] == [3.0, 3.0, 6.0, 6.0]
    assert loop.clock.now == 6.0 and loop.in_flight == 0
    assert loop.traffic.messages == 8


def test_one_task_per_node_is_enforced():
    grid = make_grid(n=1)
    node = next(iter(grid.get_node_ids()))
    loop = EventLoop(grid, VirtualClock(), DelayModel(np.ones(1)))
    arrays = ArrayRecord([np.zeros(1)])
    loop.send([(train_instruction(arrays, CONFIG, node, "1"), 0, 1, None)])
    try:
        loop.send([(train_instruction(arrays, CONFIG, node, "1"), 0, 1, None)])
    except RuntimeError as err:
        assert "already has a task in flight" in str(err)
    else:
        raise AssertionError("a second task for a busy node was accepted")


def test_fedavg_plugs_into_a_plain_flower_client_app():
    grid = make_grid(n=3)
    start = ArrayRecord([np.zeros(3, dtype=np.float32)])
    result = FedAvg(fraction_train=1.0).start(grid, start, num_rounds=2)
    # each round: sum_i (i+1)/6 * (w + i + 1) = w + (1 + 4 + 9) / 6
    expected = np.full(3, 2 * 14 / 6, dtype=np.float32)
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[0], expected, rtol=1e-6)


class SilentGrid(InlineGrid):
    """Nodes that take every message and never answer."""

    def pull_messages(self, message_ids):
        return []


class AnswersOnceGrid(InlineGrid):
    """Nodes that answer their first message, then never again."""

    def pull_messages(self, message_ids):
        self.answered = getattr(self, "answered", set())
        replies = [r for r in super().pull_messages(message_ids)
                   if r.metadata.src_node_id not in self.answered]
        self.answered.update(r.metadata.src_node_id for r in replies)
        return replies


def test_the_automatic_reply_timeout_follows_the_expected_task_time():
    grid = make_grid(AnswersOnceGrid, n=2)
    nodes = sorted(grid.get_node_ids())
    arrays = ArrayRecord([np.zeros(2, dtype=np.float32)])
    slow = DelayModel(np.array([30.0, 1.0]))  # client 0: 30 s a step, 4 steps: 120 s a task
    wall = EventLoop(grid, WallClock(), slow)
    assert wall.reply_timeout() == MIN_REPLY_TIMEOUT  # nothing in flight, nothing seen
    wall.send([(train_instruction(arrays, CONFIG, nodes[0], "1"), 0, 4, None)])
    # a node's first reply may take as long as Flower's own strategies wait (a cold start)
    assert wall.reply_timeout() == FIRST_REPLY_TIMEOUT
    assert wall.next_completion().reply is not None
    wall.send([(train_instruction(arrays, CONFIG, nodes[0], "1"), 0, 4, None)])
    assert wall.reply_timeout() == REPLY_TIMEOUT_FACTOR * 120.0
    # in virtual time the delays are not waited for: only the replies seen so far count
    virtual = EventLoop(make_grid(AnswersOnceGrid, n=2), VirtualClock(), slow)
    virtual.send([(train_instruction(arrays, CONFIG, nodes[0], "1"), 0, 4, None)])
    assert virtual.reply_timeout() == FIRST_REPLY_TIMEOUT
    virtual.next_completion()
    virtual.send([(train_instruction(arrays, CONFIG, nodes[0], "1"), 0, 4, None)])
    assert virtual.reply_timeout() == MIN_REPLY_TIMEOUT  # the first reply's time not counted
    virtual._slowest_reply = 9.0
    assert virtual.reply_timeout() == REPLY_TIMEOUT_FACTOR * 9.0
    assert EventLoop(grid, WallClock(), slow, timeout=5.0).reply_timeout() == 5.0


def test_a_long_wait_says_whom_it_waits_for_then_gives_up_on_the_oldest(caplog):
    grid = make_grid(SilentGrid, n=3)
    nodes = sorted(grid.get_node_ids())
    loop = EventLoop(grid, WallClock(), DelayModel(np.zeros(3)), poll_interval=0.005,
                     timeout=0.2)
    arrays = ArrayRecord([np.zeros(2, dtype=np.float32)])
    for client in (2, 1):  # two sends: client 2's task is the older
        loop.send([(train_instruction(arrays, CONFIG, nodes[client], "1"), client, 1, None)])
    with caplog.at_level(logging.INFO, logger="flwr"):
        given_up = loop.next_completion()
    assert given_up.reply is None and given_up.failure_reason == "no reply before timeout"
    assert given_up.client == 2  # sent first
    waiting = [r for r in caplog.records if "waiting for client(s)" in r.getMessage()]
    assert waiting and f"[2, 1] (nodes [{nodes[2]}, {nodes[1]}])" in waiting[0].getMessage()
    assert "given up after 0.2 s" in waiting[0].getMessage()
    # no reply has come in yet: a runtime starting its ClientApps, said without alarm
    assert waiting[0].levelno == logging.INFO
    assert "no reply yet: the ClientApps are starting" in waiting[0].getMessage()


class FakeTime:
    """time.monotonic and time.sleep for a run that must see minutes of wall time pass:
    sleeping moves the clock, nothing waits."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.01)


class ColdStartGrid(InlineGrid):
    """Each node's first reply comes `cold` wall seconds after its message (a runtime that is
    still starting: Ray, a SuperNode importing torch); later replies at once."""

    def __init__(self, clock, cold, *args):
        super().__init__(*args)
        self.clock, self.cold = clock, cold
        self.pushed_at, self.warm = {}, set()

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        self.pushed_at.update(dict.fromkeys(ids, self.clock.now))
        return ids

    def pull_messages(self, message_ids):
        ready = [i for i in message_ids if i in self._pending and (
            self._pending[i].metadata.dst_node_id in self.warm
            or self.clock.now - self.pushed_at[i] >= self.cold)]
        replies = list(super().pull_messages(ready))
        self.warm.update(r.metadata.src_node_id for r in replies)
        return replies


def test_first_replies_slower_than_a_minute_are_waited_for(monkeypatch):
    """A cold start of 90 wall seconds (Flower's Ray engine on a loaded machine took 40-100 s)
    drops no reply, sync or async, with the automatic timeout."""
    import time

    from asyncfl.strategies import FedAsync

    fake = FakeTime()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    runs = ((FedAvg(fraction_evaluate=0.0), 9), (FedAsync(fraction_evaluate=0.0), 3))
    for strategy, updates in runs:
        grid = ColdStartGrid(fake, 90.0, plain_app, {}, 3)
        started = fake.now
        strategy.start(grid, ArrayRecord([np.zeros(2, dtype=np.float32)]), num_rounds=3)
        assert fake.now - started >= 90.0  # the minute did pass
        assert not strategy.recorder.failures
        assert len(strategy.recorder.applied()) == updates  # 3 rounds of 3, or 3 versions
