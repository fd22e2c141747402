"""MIFA: memory-augmented impatient federated averaging (Gu et al., NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncfl.engine import arguments
from asyncfl.engine.base import SyncStrategy
from asyncfl.engine.runner import Arrays, RunParts
from asyncfl.protocol import DELTA
from asyncfl.strategies.blocks import checked_lr
from asyncfl.strategies.registry import register, server_lr, sync_settings


class MIFARule:
    r"""Remember every client's latest delta and step on the mean over all N clients every
    round, whoever answered. With S_t the clients heard from in round t (their new deltas
    Delta^i) and G^i the memory (zero for a client never heard from):

    .. math::
        G^i \leftarrow \Delta^i \; (i \in S_t), \qquad
        w_{t+1} = w_t + \eta \, \frac{1}{N} \sum_{i=1}^{N} G^i

    So a client that is offline keeps pulling the model its last known way instead of
    dropping out of the average (unbiased under arbitrary unavailability). N is the run's
    client count; the memory starts at zero (our reading of the paper's Algorithm 1, which
    waits for no one). Example counts do not weigh the mean (the paper's uniform average).

    Example:
        >>> import numpy as np
        >>> rule = MIFARule(1.0, num_clients=2)
        >>> rule.combine({"x": np.array([0.0])}, [{"x": np.array([2.0])}], [5], clients=[0])
        {'x': array([1.])}
        >>> rule.combine({"x": np.array([1.0])}, [{"x": np.array([4.0])}], [5], clients=[1])
        {'x': array([4.])}
    """

    update_kind = DELTA
    state_fields = ("memory",)
    by_client = True

    def __init__(self, server_lr: float = 1.0, num_clients: int | None = None) -> None:
        self.server_lr = checked_lr(server_lr, "server_lr")
        self.num_clients = num_clients
        #: G^i: client -> its latest delta (float64)
        self.memory: dict[int, Arrays] = {}

    def combine(self, global_arrays: Arrays, updates: list[Arrays],
                num_examples: list[float], clients: list[int] | None = None) -> Arrays:
        if clients is None or self.num_clients is None:
            raise ValueError("MIFARule needs the updates' clients and num_clients (N)")
        for client, update in zip(clients, updates, strict=True):
            self.memory[client] = {k: v.astype(np.float64) for k, v in update.items()}
        scale = self.server_lr / max(self.num_clients, len(self.memory))
        return {key: (value + scale * sum(m[key] for m in self.memory.values())
                      ).astype(value.dtype) for key, value in global_arrays.items()}


class MIFA(SyncStrategy):
    """MIFA: every round the clients that are available train from the global model; the
    server keeps each client's latest delta and steps on the mean over all clients
    (`MIFARule`), so clients that come and go neither stall a round nor bias the average.

    Args:
        fraction_train: C, the fraction of the available clients sampled per round.
            Default: 1.0.
        server_lr: eta, the multiple of the mean remembered delta applied; None means 1.
            Default: None.
        **options: what every asyncfl strategy takes (`AsyncflStrategy`: Flower's FedAvg
            arguments, clock, delays, availability, guard, ...) and `round_timeout`,
            `min_train_nodes` (`SyncStrategy`).

    Example:
        >>> MIFA(server_lr=0.5).rule.server_lr
        0.5
    """

    reply_kind = DELTA
    step_setting = "server_lr (run config: server-lr)"

    def __init__(self, fraction_train: float = 1.0, *, server_lr: float | None = None,
                 **options: Any) -> None:
        super().__init__(fraction_train, **options)
        self.server_lr = arguments.optional_positive("server_lr", server_lr)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> MIFARule:
        return MIFARule(self.server_lr if self.server_lr is not None else 1.0,
                        parts.num_clients if parts is not None else None)


@register("mifa", MIFA)
def mifa_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """MIFA's constructor arguments from a validated run config."""
    return {**sync_settings(config), "server_lr": server_lr(config)}
