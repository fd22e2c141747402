"""The reply guard: what may touch the global model, which clients stop getting tasks, and
when the server's own steps have made the model diverge."""

from __future__ import annotations

import math

import numpy as np

from asyncfl.engine import Completion
from asyncfl.engine.utils import MAX_EXAMPLES, check_reply, update_norm
from asyncfl.protocol import NUM_EXAMPLES, WEIGHTS, TrainReply, parse_reply

NORM_ACTIONS = ("clip", "reject")
#: faulty replies in a row after which a plug-in strategy stops sending a client tasks
DEFAULT_MAX_FAULTS = 3


class DivergenceError(RuntimeError):
    """The server's steps made the global model non-finite or explode."""


class CapabilityError(RuntimeError):
    """The ClientApp cannot do what the algorithm needs (the message names what is missing and
    the `asyncfl.client` helper that adds it)."""


class NoClientLeftError(RuntimeError):
    """Every client was dropped before any update could be applied: no reply can succeed."""


class ReplyGuard:
    """Checks every reply before it reaches a rule (`check_reply`: examples, version, keys,
    shapes, dtypes, finite values), bounds the update norm, and drops a client after
    `max_faults` faulty replies in a row (0: never).

    With `norm_bound` > 0 an update (the change from the model the client started from)
    larger than the bound is scaled down to it (`norm_action = "clip"`) or rejected.

    A new global model that is not finite, or whose norm passes `divergence_factor` times the
    model's scale (the initial model's norm, at least 1; a model that starts at zeros takes
    its scale from the first new version), stops the
    run (`DivergenceError`, naming the server setting to lower): every update in it was
    checked finite, so the server's step is to blame, and no client is sent a model it can
    only return NaN from and then blamed for it.
    """

    def __init__(self, max_faults: int = DEFAULT_MAX_FAULTS, norm_bound: float = 0.0,
                 norm_action: str = "clip", divergence_factor: float = 1e3) -> None:
        if (max_faults < 0 or norm_bound < 0 or norm_action not in NORM_ACTIONS
                or not divergence_factor > 1):
            raise ValueError(f"max_faults and norm_bound must be >= 0, norm_action one of "
                             f"{NORM_ACTIONS}, divergence_factor > 1; got {max_faults}, "
                             f"{norm_bound}, {norm_action!r}, {divergence_factor}")
        self.max_faults = max_faults
        self.norm_bound = norm_bound
        self.norm_action = norm_action
        self.divergence_factor = divergence_factor
        self._scale: float | None = None  # the norm the divergence limit is relative to
        self.faults: dict[int, int] = {}
        self.dropped: set[int] = set()

    def check(self, completion: Completion, reference: dict[str, np.ndarray],
              start: dict[str, np.ndarray] | None = None, max_examples: int = MAX_EXAMPLES,
              weighted_by_key: str = NUM_EXAMPLES) -> TrainReply | str:
        """The parsed reply if it may touch the global model, else why not (and the fault is
        counted). `start` is the model the client started from where kept, else `reference`
        (the global model) stands in for it; `weighted_by_key` is the metric holding the
        reply's weight (its example count)."""
        reason = completion.failure_reason
        if not reason:
            try:
                reply = parse_reply(completion.reply)
                reason = check_reply(reply.arrays, reply.metrics, reference,
                                     max_examples=max_examples,
                                     version_sent=int(completion.tag),
                                     weighted_by_key=weighted_by_key)
            except ValueError as err:
                reason = f"malformed reply: {err}"
        if not reason and self.norm_bound > 0:
            arrays, reason = self._bound(reply.arrays, reply.kind,
                                         start if start is not None else reference)
            reply = TrainReply(arrays, reply.metrics, reply.kind)
        if reason:
            self._fault(completion.client)
            return reason
        self.faults[completion.client] = 0
        return reply

    def expect_model(self, initial: dict[str, np.ndarray]) -> None:
        """Take the run's initial (or resumed) model: its norm is the scale, unless it is 0."""
        norm = update_norm(initial)
        self._scale = max(1.0, norm) if norm > 0 else None

    def check_model(self, version: int, arrays: dict[str, np.ndarray], setting: str) -> None:
        """Stop the run if the new global model diverged; `setting` is what to lower."""
        norm = update_norm(arrays)
        if self._scale is None and math.isfinite(norm):
            self._scale = max(1.0, norm)
        limit = self.divergence_factor * (self._scale or 1.0)
        if not norm <= limit:  # NaN included
            raise DivergenceError(
                f"the global model diverged at version {version}: its norm is {norm:.3g}, "
                f"past {limit:.3g} ({self.divergence_factor:g} x its scale at the start), "
                f"although every update applied was checked finite and in bounds. The server's "
                f"step is too large: lower {setting}")

    def _bound(self, arrays: dict[str, np.ndarray], reply_kind: str,
               start: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        is_change = reply_kind != WEIGHTS
        change = arrays if is_change else {k: v.astype(np.float64) - start[k]
                                           for k, v in arrays.items()}
        norm = update_norm(change)
        if norm <= self.norm_bound:
            return arrays, ""
        if self.norm_action == "reject":
            return arrays, f"update too large: norm {norm:.4g} > bound {self.norm_bound:g}"
        scale = self.norm_bound / norm
        clipped = {k: (v * scale if np.issubdtype(v.dtype, np.floating) else v)
                   for k, v in change.items()}
        if not is_change:
            clipped = {k: start[k] + v for k, v in clipped.items()}
        return {k: np.asarray(v).astype(arrays[k].dtype) for k, v in clipped.items()}, ""

    def _fault(self, client: int) -> None:
        self.faults[client] = self.faults.get(client, 0) + 1
        if self.max_faults and self.faults[client] >= self.max_faults:
            self.dropped.add(client)

    def snapshot(self) -> dict:
        return {"faults": dict(self.faults), "dropped": set(self.dropped)}

    def restore(self, state: dict) -> None:
        self.faults, self.dropped = dict(state["faults"]), set(state["dropped"])
