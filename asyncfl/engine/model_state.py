r"""One rule for model state that is not trained: batch-norm running statistics and counters.

A torch state_dict carries, beside the parameters, buffers that no optimizer steps: running
means and variances (floats) and `num_batches_tracked` (an integer counter). Every asyncfl
strategy treats them alike. The strategy's rule (FedAvg's average, FedBuff's scaled buffer
step, FedAsync's mix, a gradient step) moves the trained parameters only; a new version's
statistics are the current ones moved by the example-weighted mean of the changes that the
updates which made the version brought to them:

.. math::
    s \leftarrow s + \frac{\sum_i n_i (s_i - s_{0,i})}{\sum_i n_i}

where s_{0,i} is the statistic update i started from. No server learning rate, staleness
weight, buffer scaling or mixing rate applies: a statistic estimates the data, it is not a
step. From a common start (a synchronous round) this is the example-weighted average of the
clients' statistics. Integer counters are rounded to the nearest integer and stay integers, so
K local steps per update advance `num_batches_tracked` by exactly K per version.

A reply gives s_i - s_{0,i} directly as a delta; a weights reply as s_i minus the model the
client started from; a gradient reply carries the change in the statistic's place (asyncfl's
ClientApp does; a gradient has no entry of its own for a buffer).
"""

from __future__ import annotations

import numpy as np

from asyncfl.protocol import WEIGHTS, is_statistic


class ModelState:
    """Splits a model into trained parameters (what rules see) and statistics, and moves the
    statistics by the rule above."""

    def __init__(self, model: dict[str, np.ndarray]) -> None:
        self.keys = list(model)
        self.statistics = [k for k, v in model.items() if is_statistic(k, v)]
        self._pending: list[tuple[dict[str, np.ndarray], float]] = []

    def parameters(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The trained entries of a model or update (all of them when there are no
        statistics)."""
        if not self.statistics:
            return arrays
        return {k: v for k, v in arrays.items() if k not in self.statistics}

    def add(self, update: dict[str, np.ndarray], kind: str,
            start: dict[str, np.ndarray] | None, weight: float) -> None:
        """Remember one accepted update's change to the statistics (`start`: the model it
        started from, needed for a weights reply)."""
        if not self.statistics:
            return
        if kind == WEIGHTS:
            assert start is not None, "a weights reply needs the model it started from"
            change = {k: update[k].astype(np.float64) - start[k] for k in self.statistics}
        else:
            change = {k: update[k].astype(np.float64) for k in self.statistics}
        self._pending.append((change, weight))

    def new_version(self, current: dict[str, np.ndarray],
                    parameters: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The new global model: the rule's `parameters`, and the `current` statistics moved
        by the weighted mean change of the updates remembered since the last version."""
        if not self.statistics:
            return parameters
        total = sum(weight for _, weight in self._pending)
        model = {}
        for key in self.keys:
            if key not in self.statistics:
                model[key] = parameters[key]
                continue
            value = current[key]
            if total > 0:
                moved = value + sum(w * change[key] for change, w in self._pending) / total
                value = (moved if np.issubdtype(value.dtype, np.floating)
                         else np.rint(moved)).astype(value.dtype)
            model[key] = value
        self._pending = []
        return model

    def snapshot(self) -> list:
        return list(self._pending)

    def restore(self, pending: list) -> None:
        self._pending = list(pending)
