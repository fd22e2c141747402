"""Hostile clients for tests: one node of an inline run answers its train tasks badly."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from asyncfl.protocol import (
    MODEL_VERSION,
    SEGMENT,
    TRAIN,
    TRAIN_LOSS,
    arrays_to_record,
    parse_reply,
)
from asyncfl.tools.inline import InlineGrid


def spoil(reply: Message, instruction: Message, fault: str) -> Message | None:
    """What a hostile client sends instead of its honest train `reply` to `instruction`
    (a segment's reply without arrays, APSB's mid-task check-in, goes as it is unless the
    fault replaces the whole reply)."""
    if fault == "none":
        return None
    if not reply.content.array_records:
        return reply
    parsed = parse_reply(reply)
    metrics = MetricRecord(dict(parsed.metrics))
    arrays = dict(parsed.arrays)
    if fault == "inf-version":
        metrics[MODEL_VERSION] = math.inf
    elif fault == "nan-metric":
        metrics[TRAIN_LOSS] = math.nan
    elif fault == "huge":
        arrays = {k: (v * np.asarray(1e6, v.dtype) if np.issubdtype(v.dtype, np.floating)
                      else v) for k, v in arrays.items()}
    else:
        raise ValueError(f"unknown fault {fault!r}")
    return Message(RecordDict({"arrays": arrays_to_record(arrays), "metrics": metrics}),
                   reply_to=instruction)


class HostileApp:
    """A ClientApp that answers like `inner`, except the train tasks of the node holding
    partition `partition` (client index `partition`): `fault`."""

    def __init__(self, inner, partition: int, fault: str) -> None:
        self.inner, self.partition, self.fault = inner, partition, fault

    def __call__(self, message: Message, context: Context):
        reply = self.inner(message, context)
        if (int(context.node_config["partition-id"]) != self.partition
                or message.metadata.message_type not in (TRAIN, SEGMENT)
                or reply.has_error()):
            return reply
        return spoil(reply, message, self.fault)


def hostile_grid(fault: str, client: int = 3) -> type[InlineGrid]:
    """An InlineGrid class whose node for `client` (its index) answers with `fault`."""

    class HostileGrid(InlineGrid):
        def __init__(self, client_app, run_config, num_nodes, run_id=1):
            super().__init__(client_app, run_config, num_nodes, run_id)
            self.client_app = HostileApp(client_app, client, fault)

    return HostileGrid
