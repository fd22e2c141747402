"""Rules and helpers shared by every strategy: sampling, averaging, reply checks, run log.

The rules are pure functions of numpy arrays so they can be tested on their own; the Flower
messaging around them lives in the strategy modules.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
MODEL_VERSION = "model-version"

EVENT_COLUMNS = (
    "version_apply", "version_dispatch", "staleness", "client", "virtual_time", "wall_time",
    "dispatch_time", "duration", "steps", "num_examples", "train_loss", "bytes_down",
    "bytes_up", "comm_messages", "comm_bytes", "rejected",
)


def sample_size(fraction: float, num_clients: int) -> int:
    """Clients sampled per round for fraction C of N: round(C * N), at least one."""
    return max(1, min(num_clients, math.floor(fraction * num_clients + 0.5)))


def sample_clients(rng: np.random.Generator, num_clients: int, fraction: float) -> list[int]:
    """A seeded sample of client indices without replacement, in ascending order."""
    chosen = rng.choice(num_clients, size=sample_size(fraction, num_clients), replace=False)
    return sorted(int(c) for c in chosen)


def task_seed(seed: int, version: int, client: int) -> int:
    """Seed for a client's local shuffling, fixed by (run seed, model version, client)."""
    digest = hashlib.blake2b(f"{seed}:{version}:{client}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


_NPY_MAGIC = b"\x93NUMPY"


def array_to_numpy(array: Array) -> np.ndarray:
    """A read-only numpy view of a serialized Array, without parsing the .npy header.

    Flower stores numpy arrays as .npy bytes; `Array.numpy()` re-parses the header with
    `ast.literal_eval` and copies the data, which dominates small messages. The shape and dtype
    are on the Array already, so C-ordered data is viewed in place; anything else (Fortran
    order, another serialization, a size that does not add up) goes through `Array.numpy()`.
    """
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == _NPY_MAGIC:
        length_bytes = 2 if data[6] == 1 else 4
        start = 8 + length_bytes
        header_end = start + int.from_bytes(data[8:start], "little")
        if b"'fortran_order': False" in data[start:header_end]:
            dtype = np.dtype(array.dtype)
            count = math.prod(array.shape)
            if not dtype.hasobject and len(data) - header_end == count * dtype.itemsize:
                view = np.frombuffer(data, dtype=dtype, count=count, offset=header_end)
                return view.reshape(tuple(array.shape))
    return array.numpy()


_npy_headers: dict[tuple[str, tuple[int, ...]], bytes] = {}


def numpy_to_array(value: np.ndarray) -> Array:
    """A Flower Array holding exactly the .npy bytes `np.save` writes, built from a cached
    header per (dtype, shape): the header is the costly part of `np.save` for small arrays."""
    value = np.ascontiguousarray(value)
    key = (value.dtype.str, value.shape)
    header = _npy_headers.get(key)
    if header is None:
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        header = buffer.getvalue()[: buffer.tell() - value.nbytes]
        if len(_npy_headers) < 4096:
            _npy_headers[key] = header
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype="numpy.ndarray",
                 data=header + value.tobytes())


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of an ArrayRecord by key, as (read-only) numpy arrays."""
    return {key: array_to_numpy(array) for key, array in record.items()}


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord that keeps the keys (and so works with torch state_dicts)."""
    record = ArrayRecord()
    for key, value in arrays.items():
        record[key] = numpy_to_array(value)
    return record


def weighted_average(
    models: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """sum_i w_i * x_i / sum_i w_i per array, accumulated in float64, cast back to each dtype."""
    total = float(sum(weights))
    if not models or total <= 0:
        raise ValueError("weighted_average needs at least one model and a positive total weight")
    out = {}
    for key, first in models[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for model, weight in zip(models, weights, strict=True):
            acc += (weight / total) * model[key]
        out[key] = acc.astype(first.dtype)
    return out


def gradient_step(
    arrays: dict[str, np.ndarray], gradient: dict[str, np.ndarray], lr: float
) -> dict[str, np.ndarray]:
    """w - lr * g per array (float arrays only move; integer buffers are kept)."""
    out = {}
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating):
            out[key] = (value - np.asarray(lr, dtype=value.dtype) * gradient[key]).astype(
                value.dtype
            )
        else:
            out[key] = value
    return out


def reply_records(reply: Message) -> tuple[ArrayRecord, MetricRecord]:
    """The single ArrayRecord and MetricRecord of a train reply (Flower's FedAvg contract)."""
    arrays = [r for r in reply.content.values() if isinstance(r, ArrayRecord)]
    metrics = [r for r in reply.content.values() if isinstance(r, MetricRecord)]
    if len(arrays) != 1 or len(metrics) != 1:
        raise ValueError(f"expected one ArrayRecord and one MetricRecord in the reply, found "
                         f"{len(arrays)} and {len(metrics)}")
    return arrays[0], metrics[0]


def parse_reply(reply: Message) -> tuple[dict[str, np.ndarray], MetricRecord]:
    """The arrays and metrics of a train reply (raises ValueError if it is malformed)."""
    try:
        arrays, metrics = reply_records(reply)
        return record_to_arrays(arrays), metrics
    except TypeError as err:
        raise ValueError(str(err)) from err


MAX_EXAMPLES = 10**9


def check_reply(
    arrays: dict[str, np.ndarray], metrics: MetricRecord, reference: dict[str, np.ndarray],
    *, version_sent: int | None = None, max_examples: int = MAX_EXAMPLES,
) -> str:
    """Why a parsed train reply must not touch the global model, or '' if it is usable:
    bad or absurd example counts, a model version that was not the one sent, arrays whose
    keys, shapes or dtypes differ from the model's, NaN or Inf."""
    examples = metrics.get(NUM_EXAMPLES)
    if not isinstance(examples, (int, float)) or not examples > 0 or not math.isfinite(examples):
        return f"bad {NUM_EXAMPLES}: {examples!r}"
    if examples > max_examples:
        return f"bad {NUM_EXAMPLES}: {examples!r} is more than the client holds ({max_examples})"
    version = metrics.get(MODEL_VERSION)
    if version_sent is not None and version is not None and int(version) != version_sent:
        return f"wrong model version: {version} was never sent to this client ({version_sent} was)"
    if list(arrays) != list(reference):
        return f"wrong arrays: keys {list(arrays)[:4]} do not match the model's"
    for key, value in arrays.items():
        if value.shape != reference[key].shape:
            return (f"wrong shape: array {key!r} has shape {value.shape}, "
                    f"expected {reference[key].shape}")
        if value.dtype != reference[key].dtype:
            return (f"wrong dtype: array {key!r} is {value.dtype}, "
                    f"expected {reference[key].dtype}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"not finite: array {key!r} holds NaN or Inf"
    return ""


def update_norm(update: dict[str, np.ndarray]) -> float:
    """The L2 norm of an update over all its floating-point arrays."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64)))
                         for v in update.values() if np.issubdtype(v.dtype, np.floating)))


def train_instruction(
    arrays: ArrayRecord | None, config: ConfigRecord, node_id: int, group_id: str,
    message_type: str = "train",
) -> Message:
    """A train message carrying its config and, unless None, a model."""
    content = RecordDict({"config": config} if arrays is None
                         else {"arrays": arrays, "config": config})
    return Message(content=content, dst_node_id=node_id, message_type=message_type,
                   group_id=group_id)


@dataclass
class RunLog:
    """What a strategy did: one row per applied update, per evaluation, and every skip."""

    events: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    #: further per-run tables a strategy keeps (written as <name>.csv), e.g. ESync's state
    tables: dict[str, list[dict]] = field(default_factory=dict)

    def skip(self, client: int, version: int, reason: str) -> None:
        """Count and log a reply that was not applied."""
        kind = reason.split(":")[0]
        self.failures[kind] += 1
        log(WARNING, "skipped reply of client %d at version %d: %s", client, version, reason)

    def applied(self) -> list[dict]:
        """The events of updates that were applied (not the rejected replies)."""
        return [row for row in self.events if not row.get("rejected")]
