"""The server's memory does not grow with idle clients (not timed)."""

import numpy as np
from flwr.app import ArrayRecord

from asyncfl.engine import DelayModel, VirtualClock
from asyncfl.strategies import FedBuff, RunningMean
from asyncfl.tools.inline import InlineGrid
from tests.test_async_strategies import plain_app


class CountingGrid(InlineGrid):
    """Records the most messages ever pending at once."""

    peak = 0

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        self.peak = max(self.peak, len(self._pending))
        return ids


def test_stored_model_versions_stay_bounded_by_clients_in_flight():
    clients, in_flight = 300, 6
    delays = DelayModel(np.random.default_rng(0).exponential(1.0, clients))
    strategy = FedBuff(buffer_size=3, concurrency=in_flight, client_returns="weights",
                       clock=VirtualClock(), delays=delays, fraction_evaluate=0.0)
    grid = CountingGrid(plain_app, {}, clients)
    strategy.start(grid, ArrayRecord([np.zeros(1000, dtype=np.float32)]), num_rounds=100)
    assert len(strategy.recorder.events) == 300
    # versions are kept only while a client started from them is in flight
    assert 1 <= strategy.recorder.totals.versions_kept_peak <= in_flight
    # and the Grid never held more messages than the tasks in flight
    assert grid.peak == in_flight


def test_running_mean_keeps_no_per_client_model_copies():
    clients = 2000
    strategy = RunningMean(concurrency=10, clock=VirtualClock(),
                           delays=DelayModel(np.ones(clients)), fraction_evaluate=0.0)
    grid = CountingGrid(plain_app, {}, clients)
    strategy.start(grid, ArrayRecord([np.zeros(4)]), num_rounds=50)
    assert strategy.recorder.totals.versions_kept_peak == 0  # the rule needs no base models
    assert grid.peak == 10
