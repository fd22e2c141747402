"""The reply guard: what may touch the global model, which clients stop getting tasks, and
when the server's own steps have made the model diverge."""

from __future__ import annotations

import copy
import math
from collections import deque

import numpy as np

from asyncfl.engine import Completion
from asyncfl.engine.utils import MAX_EXAMPLES, check_reply, update_norm
from asyncfl.protocol import ARRAYS, CONFIG, NUM_EXAMPLES, WEIGHTS, TrainReply, parse_reply

NORM_ACTIONS = ("clip", "reject")
#: faulty replies in a row after which a plug-in strategy stops sending a client tasks
DEFAULT_MAX_FAULTS = 3
#: an update more than this many times the reference norm of the accepted ones is an outlier
DEFAULT_OUTLIER_FACTOR = 100.0
#: accepted updates the reference is taken over (the newest), and how many it needs first
OUTLIER_WINDOW, OUTLIER_AFTER = 50, 3
#: the reference: this quantile of the window's norms (per local step). Not the median: late
#: in training most minibatches are fitted and their gradients tiny, and an honest batch with
#: one misclassified example has a gradient 10^4 times the median (ASGD on digits dropped
#: honest clients that way); one client in ten cannot move the 90th percentile.
OUTLIER_QUANTILE = 0.9


class DivergenceError(RuntimeError):
    """The server's steps made the global model non-finite or explode."""


class CapabilityError(RuntimeError):
    """The ClientApp cannot do what the algorithm needs (the message names what is missing and
    the `asyncfl.client` helper that adds it)."""


class SettingError(ValueError):
    """A strategy argument names something the ClientApp's replies do not carry."""


class SettingCheck:
    """Tells a strategy argument the ClientApp does not fit from N client faults: until a
    reply is accepted, a reply without the `weighted_by_key` metric, or an error reply from
    a ClientApp that looked up an instruction record it did not find, is a suspect; once
    `needed` clients' first replies all failed so, `SettingError` names the argument and
    what the replies (or instructions) carried."""

    def __init__(self, weighted_by_key: str, record_keys: tuple[str, str], needed: int) -> None:
        self.weighted_by_key, self.record_keys = weighted_by_key, record_keys
        self.needed = needed
        self.suspects: dict[int, str] = {}  # client -> what its reply says is misnamed
        self.settled = False

    def observe(self, completion: Completion, verdict: TrainReply | str) -> None:
        """Take one checked reply (its verdict); raise `SettingError` once it is clear."""
        if self.settled:
            return
        if not isinstance(verdict, str):
            self.settled = True
            return
        problem = self._problem(completion, verdict)
        if not problem:
            self.settled = True  # another fault: not (only) a setting
            return
        self.suspects[completion.client] = problem
        if len(self.suspects) >= self.needed:
            raise SettingError(f"{problem}; seen in the first replies of clients "
                               f"{sorted(self.suspects)[:8]}, and no reply was usable")

    def _problem(self, completion: Completion, verdict: str) -> str:
        reply = completion.reply
        if reply is None:
            return ""
        if reply.has_error():
            reason = reply.error.reason
            missing = [key for key in (ARRAYS, CONFIG) if key not in self.record_keys
                       and "KeyError" in reason and f"'{key}'" in reason]
            return (f"arrayrecord_key / configrecord_key = {self.record_keys!r}: the ClientApp "
                    f"looked for record {missing[0]!r} ({reason}); the instructions carry "
                    f"records {list(self.record_keys)}") if missing else ""
        if not verdict.startswith(f"bad {self.weighted_by_key}: None"):
            return ""
        metrics = sorted({k for r in reply.content.metric_records.values() for k in r})
        return (f"weighted_by_key = {self.weighted_by_key!r}: no reply carries this metric; "
                f"the replies carried metrics {metrics}")


class NoClientLeftError(RuntimeError):
    """Every client was dropped before any update could be applied: no reply can succeed."""


class ReplyGuard:
    """Checks every reply before it reaches a rule (`check_reply`: examples, version, metrics,
    keys, shapes, dtypes, finite values), rejects outlier updates, bounds the update norm,
    and drops a client after `max_faults` faulty replies in a row (0: never).

    Outliers (on by default; `outlier_factor` 0 turns it off): an update (the change from
    the model the client started from; a delta or gradient as sent) whose L2 norm per local
    step (the steps the server asked of the task: ESync, FedCompass and work windows give
    clients tens of times more steps than others) passes `outlier_factor` times the 90th
    percentile (`OUTLIER_QUANTILE`) of the last `OUTLIER_WINDOW` accepted updates of its
    kind (once `OUTLIER_AFTER` exist), or which alone would carry the model past the
    divergence limit below, is the client's fault: rejected, counted against it, logged with
    its name. Honest updates of one run differ by a few times (a bigger partition, an early
    step); a hundredfold one moves the model as far as a hundred honest ones and dominates
    any average it enters. One client's reply does not move a high quantile of three or
    more, and honest updates late in training are heavy-tailed. Outliers in a row from two
    or more clients (and half of those seen) are the server's doing: the run stops with
    `DivergenceError`. A strategy whose replies are data values (RunningMean) keeps only the
    divergence limit (`for_run`).

    With `norm_bound` > 0 an update larger than the bound is scaled down to it
    (`norm_action = "clip"`) or rejected; the outlier rule then looks at the bounded update.

    A new global model that is not finite, or whose norm passes `divergence_factor` times the
    model's scale (the initial model's norm, at least 1; a model that starts at zeros takes
    its scale from the first new version), stops the run (`DivergenceError`, naming the
    server setting to lower): every update in it was checked finite and not an outlier, so
    the server's step is the likely cause, and no client is sent a model it can only return
    NaN from and then blamed for it.
    """

    def __init__(self, max_faults: int = DEFAULT_MAX_FAULTS, norm_bound: float = 0.0,
                 norm_action: str = "clip", divergence_factor: float = 1e3,
                 outlier_factor: float = DEFAULT_OUTLIER_FACTOR) -> None:
        if (max_faults < 0 or norm_bound < 0 or norm_action not in NORM_ACTIONS
                or not divergence_factor > 1 or not (outlier_factor == 0 or outlier_factor > 1)
                or not math.isfinite(outlier_factor)):
            raise ValueError(f"max_faults and norm_bound must be >= 0, norm_action one of "
                             f"{NORM_ACTIONS}, divergence_factor > 1, outlier_factor 0 or a "
                             f"finite number > 1; got {max_faults}, {norm_bound}, "
                             f"{norm_action!r}, {divergence_factor}, {outlier_factor}")
        self.max_faults = max_faults
        self.norm_bound = norm_bound
        self.norm_action = norm_action
        self.divergence_factor = divergence_factor
        self.outlier_factor = outlier_factor
        self.median_rule = True
        self._scale: float | None = None  # the norm the divergence limit is relative to
        self.faults: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.norms: dict[str, deque] = {}  # reply kind -> norms of the newest accepted updates
        self.metric_shapes: dict[str, int | None] = {}  # metric -> None (number) or list length
        self._seen: set[int] = set()  # clients whose updates were looked at
        self._streak: set[int] = set()  # clients with outliers since the last normal update

    def check(self, completion: Completion, reference: dict[str, np.ndarray],
              start: dict[str, np.ndarray] | None = None, max_examples: int = MAX_EXAMPLES,
              weighted_by_key: str = NUM_EXAMPLES, setting: str = "the server's step"
              ) -> TrainReply | str:
        """The parsed reply if it may touch the global model, else why not (and the fault is
        counted). `start` is the model the client started from where kept, else `reference`
        (the global model) stands in for it; `weighted_by_key` is the metric holding the
        reply's weight (its example count); `setting` is what a `DivergenceError` found
        among the outliers names to lower."""
        reason = completion.failure_reason
        if not reason:
            try:
                reply = parse_reply(completion.reply)
                reason = check_reply(reply.arrays, reply.metrics, reference,
                                     max_examples=max_examples,
                                     version_sent=int(completion.tag),
                                     weighted_by_key=weighted_by_key,
                                     shapes=self.metric_shapes)
            except ValueError as err:
                reason = f"malformed reply: {err}"
        if not reason and (self.norm_bound > 0 or self.outlier_factor > 0):
            reply, norm, reason = self._bound(reply, start if start is not None else reference)
            if not reason and self.outlier_factor > 0:
                reason = self._outlier(norm, reply.kind, completion, setting)
        if reason:
            self._fault(completion.client)
            return reason
        self.faults[completion.client] = 0
        for key, value in reply.metrics.items():
            self.metric_shapes.setdefault(key, len(value) if isinstance(value, list) else None)
        return reply

    def for_run(self, median_rule: bool = True) -> ReplyGuard:
        """A fresh copy with these settings for one run; `median_rule` False keeps only the
        divergence limit of the outlier rule (for replies that are data values, whose
        spread around the estimate is the data's own)."""
        guard = copy.deepcopy(self)
        guard.median_rule = median_rule
        return guard

    def expect_model(self, initial: dict[str, np.ndarray]) -> None:
        """Take the run's initial (or resumed) model: its norm is the scale, unless it is 0."""
        norm = update_norm(initial)
        self._scale = max(1.0, norm) if norm > 0 else None

    def divergence_limit(self) -> float:
        """The norm past which a global model has diverged."""
        return self.divergence_factor * (self._scale or 1.0)

    def check_model(self, version: int, arrays: dict[str, np.ndarray], setting: str) -> None:
        """Stop the run if the new global model diverged; `setting` is what to lower."""
        norm = update_norm(arrays)
        if self._scale is None and math.isfinite(norm):
            self._scale = max(1.0, norm)
        limit = self.divergence_limit()
        if not norm <= limit:  # NaN included
            raise DivergenceError(
                f"the global model diverged at version {version}: its norm is {norm:.3g}, "
                f"past {limit:.3g} ({self.divergence_factor:g} x its scale at the start); "
                f"every update applied was checked finite"
                f"{', within the norm bound' if self.norm_bound > 0 else ''}"
                f"{' and not an outlier' if self.outlier_factor > 0 else ''}, so the server's "
                f"step is the likely cause: lower {setting}")

    def _bound(self, reply: TrainReply, start: dict[str, np.ndarray]
               ) -> tuple[TrainReply, float, str]:
        """The reply with its update within the norm bound (clipped), the update's norm, and
        why it is rejected ('' if it is not): over the bound with `norm_action = "reject"`."""
        arrays, is_change = reply.arrays, reply.kind != WEIGHTS
        change = arrays if is_change else {k: v.astype(np.float64) - start[k]
                                           for k, v in arrays.items()}
        norm = update_norm(change)
        if self.norm_bound > 0 and norm > self.norm_bound:
            if self.norm_action == "reject":
                return reply, norm, (f"update too large: norm {norm:.4g} > bound "
                                     f"{self.norm_bound:g}")
            scale = self.norm_bound / norm
            clipped = {k: (v * scale if np.issubdtype(v.dtype, np.floating) else v)
                       for k, v in change.items()}
            if not is_change:
                clipped = {k: start[k] + v for k, v in clipped.items()}
            arrays = {k: np.asarray(v).astype(arrays[k].dtype) for k, v in clipped.items()}
            reply, norm = TrainReply(arrays, reply.metrics, reply.kind), self.norm_bound
        return reply, norm, ""

    def _outlier(self, norm: float, kind: str, completion: Completion, setting: str) -> str:
        """Why an update of this norm is an outlier, or '' (and the norm is kept). Outliers in
        a row (no normal update between them) from at least two clients and half of the
        clients seen blame the model they were sent, not them: `DivergenceError`. One
        hostile client's outliers come between the others' normal updates."""
        per_step = norm / max(1, completion.planned_steps or 1)  # None: no steps asked
        reason = self._outlier_reason(norm, per_step, kind)
        self._seen.add(completion.client)
        if not reason:
            self._streak.clear()
            self.norms.setdefault(kind, deque(maxlen=OUTLIER_WINDOW)).append(per_step)
            return ""
        self._streak.add(completion.client)
        if len(self._streak) >= max(2, len(self._seen) / 2):
            raise DivergenceError(
                f"the updates of clients {sorted(self._streak)} in a row were outliers "
                f"({reason}): the models the server sent them are to blame, not those "
                f"clients; every update applied was checked finite and not an outlier, so "
                f"the server's step is the likely cause: lower {setting}")
        return reason

    def _outlier_reason(self, norm: float, per_step: float, kind: str) -> str:
        if self._scale is not None and not norm <= self.divergence_limit():
            return (f"outlier update: norm {norm:.4g} alone would carry the model past the "
                    f"divergence limit {self.divergence_limit():.4g}")
        norms = self.norms.get(kind, ())
        if self.median_rule and len(norms) >= OUTLIER_AFTER:
            reference = float(np.quantile(norms, OUTLIER_QUANTILE))
            if per_step > self.outlier_factor * reference:
                return (f"outlier update: norm per local step {per_step:.4g} > "
                        f"{self.outlier_factor:g} x the 90th percentile {reference:.4g} of "
                        f"the last {len(norms)} accepted")
        return ""

    def _fault(self, client: int) -> None:
        self.faults[client] = self.faults.get(client, 0) + 1
        if self.max_faults and self.faults[client] >= self.max_faults:
            self.dropped.add(client)

    def snapshot(self) -> dict:
        return {"faults": dict(self.faults), "dropped": set(self.dropped),
                "norms": {kind: list(norms) for kind, norms in self.norms.items()},
                "metric_shapes": dict(self.metric_shapes),
                "seen": set(self._seen), "streak": set(self._streak)}

    def restore(self, state: dict) -> None:
        self.faults, self.dropped = dict(state["faults"]), set(state["dropped"])
        self.norms = {kind: deque(norms, maxlen=OUTLIER_WINDOW)
                      for kind, norms in state.get("norms", {}).items()}
        self.metric_shapes = dict(state.get("metric_shapes", {}))
        self._seen = set(state.get("seen", ()))
        self._streak = set(state.get("streak", ()))
