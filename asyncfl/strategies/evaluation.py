"""When the newest global model is evaluated: every `every` versions and the last one, or, with
an `interval`, at every multiple of it on the run's clock (an evaluator beside training)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from asyncfl.strategies.recorder import RunRecorder
from asyncfl.timing import EventLoop

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class EvaluationSchedule:
    """Evaluates with the ServerApp's `evaluate_fn` on a schedule; results go to the Flower
    `Result` and the recorder (evals.csv)."""

    def __init__(self, every: int = 1, interval: float = 0.0) -> None:
        if every < 1 or interval < 0:
            raise ValueError(f"evaluation every must be >= 1 and interval >= 0, got {every}, "
                             f"{interval}")
        self.every = every
        self.interval = interval
        self.next_due = interval
        self._fn: EvaluateFn | None = None

    def bind(self, evaluate_fn: EvaluateFn | None, loop: EventLoop, recorder: RunRecorder,
             result: Result) -> None:
        """Attach the run's evaluation function and where its results go."""
        self._fn, self._loop, self._recorder, self._result = evaluate_fn, loop, recorder, result

    def evaluate(self, version: int, arrays: ArrayRecord, at: float | None = None) -> None:
        """Evaluate a model now; `at` is the time on the run's clock it stands for."""
        if self._fn is None:
            return
        self._loop.phases.enter("evaluate")
        metrics = self._fn(version, arrays)
        if metrics is None:
            return
        self._result.evaluate_metrics_serverapp[version] = metrics
        virtual, wall = self._loop.virtual_clock.now, self._loop.wall_clock.now
        if at is not None:
            virtual, wall = (at, wall) if self._loop.virtual else (virtual, at)
        self._recorder.evaluated(version, virtual, wall, metrics)

    def new_version(self, version: int, arrays: ArrayRecord, last: bool) -> None:
        """Evaluate a new version if it is due: every `every` versions and the last one;
        with an interval, only the last (`until` does the rest)."""
        if (version % self.every == 0 and self.interval <= 0) or last:
            self.evaluate(version, arrays)

    def until(self, version: int, arrays: ArrayRecord, now: float,
              inclusive: bool = False) -> None:
        """With an interval: evaluate the model in force at every multiple of it up to `now`
        (before an update landing at `now` takes effect, unless `inclusive`)."""
        if self.interval <= 0:
            return
        while self.next_due < now or (inclusive and self.next_due <= now):
            self.evaluate(version, arrays, at=self.next_due)
            self.next_due += self.interval
