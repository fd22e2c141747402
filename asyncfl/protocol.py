"""The message contract between asyncfl's strategies and a ClientApp: every record key, the
message types, what a train instruction and its reply carry, and how arrays travel.

A train instruction is a `train` (or `train.segment`) message with a ConfigRecord `config` and,
unless it continues a segmented task on the worker's own model, an ArrayRecord `arrays`. Its
reply holds one ArrayRecord and one MetricRecord (Flower's FedAvg contract) with at least
`num-examples`; asyncfl's ClientApp adds the train loss, the steps it ran, the model version it
started from and the seconds the task represents. Nothing here imports the rest of asyncfl.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

_R = TypeVar("_R")

# message types
TRAIN = "train"
#: part of a task: iterations [segment-start, segment-start + segment-steps) (APSB)
SEGMENT = "train.segment"
QUERY = "query"
#: Flower's federated evaluation (MessageType.EVALUATE); its config carries SERVER_ROUND
EVALUATE = "evaluate"
SERVER_ROUND = "server-round"

# records of a message
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
#: the accumulated gradient a segmented task carries between segments (with carry-state)
SEGMENT_GRADIENT = "segment.gradient"

# train config keys (server -> client)
LR = "lr"
LOCAL_STEPS = "local-steps"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
CLIENT_THREADS = "client-threads"
RETURN = "return"
TASK_SEED = "task-seed"
STEP_DELAY = "step-delay"
COMM_DELAY = "comm-delay"
SEGMENT_START = "segment-start"
SEGMENT_STEPS = "segment-steps"
FINAL = "final"
CARRY_STATE = "carry-state"
#: the reply metric the strategy weights updates by (its `weighted_by_key`), sent only when
#: it is not `num-examples`: the client helper then reports its example count under it too
WEIGHT_KEY = "weight-key"

# what a client returns (`return`)
WEIGHTS = "weights"
DELTA = "delta"
GRADIENT = "gradient"
RETURN_KINDS = (WEIGHTS, DELTA, GRADIENT)

# metrics (client -> server); MODEL_VERSION and LOSS_SUM also travel in the config
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
STEPS = LOCAL_STEPS  # the local steps a task ran
MODEL_VERSION = "model-version"
COMPUTE_TIME = "compute-time"
LOSS_SUM = "loss-sum"
PARTITION_ID = "partition-id"
#: what a reply's arrays are, as an index into RETURN_KINDS (0 weights, 1 delta, 2 gradient).
#: A reply without it holds weights: what any ClientApp following Flower's FedAvg contract sends
UPDATE_KIND = "update-kind"


#: name endings of the float buffers torch's batch norm keeps (integer arrays always count)
STATISTIC_NAMES = ("running_mean", "running_var")


def is_statistic(key: str, value: np.ndarray) -> bool:
    """Whether a model entry is untrained state: an integer array, or a running statistic.
    A gradient or pseudo-gradient reply carries such an entry's change in its place (it has
    no gradient), and strategies move it by the mean change, not by their step."""
    return (not np.issubdtype(value.dtype, np.floating)
            or key.rsplit(".", 1)[-1] in STATISTIC_NAMES)


def pseudo_gradient(start: dict[str, np.ndarray], end: dict[str, np.ndarray],
                    lr: float | None) -> dict[str, np.ndarray]:
    """The pseudo-gradient of local training from `start` to `end`: (start - end) / lr for
    the trained entries, the change end - start for untrained state (`is_statistic`). For
    plain SGD that is the sum of the step gradients; otherwise the displacement in units of
    the clients' lr. The client helper sends it; a server can derive it from weights."""
    if not lr:
        raise ValueError(f"a gradient reply needs the clients' learning rate: send {LR!r} in "
                         f"the train config (strategy.start(..., train_config=...))")
    return {k: v - start[k] if is_statistic(k, v) else (start[k] - v) / lr
            for k, v in end.items()}


def reply_kind(metrics: MetricRecord) -> str:
    """What a reply's arrays are: `weights` unless its metrics say otherwise."""
    code = metrics[UPDATE_KIND] if UPDATE_KIND in metrics else 0  # (a miss raises in .get)
    if not isinstance(code, int) or not 0 <= code < len(RETURN_KINDS):
        raise ValueError(f"metric {UPDATE_KIND!r} must be 0 (weights), 1 (delta) or 2 "
                         f"(gradient), got {code!r}")
    return RETURN_KINDS[code]


def update_kind_metric(kind: str) -> dict[str, int]:
    """The metric that marks a reply's arrays as `kind` (nothing for weights)."""
    return {} if kind == WEIGHTS else {UPDATE_KIND: RETURN_KINDS.index(kind)}


@dataclass(frozen=True)
class TrainReply:
    """A parsed train reply: its arrays by key, its metrics, and what the arrays are."""

    arrays: dict[str, np.ndarray]
    metrics: MetricRecord
    kind: str = WEIGHTS


def train_instruction(
    arrays: ArrayRecord | None, config: ConfigRecord, node_id: int, group_id: str,
    message_type: str = TRAIN, arrays_key: str = ARRAYS, config_key: str = CONFIG,
) -> Message:
    """A train message carrying its config and, unless None, a model (under the record
    names a strategy's `arrayrecord_key` and `configrecord_key` choose)."""
    content = record_dict({config_key: config} if arrays is None
                          else {arrays_key: arrays, config_key: config})
    return Message(content=content, dst_node_id=node_id, message_type=message_type,
                   group_id=group_id)


def not_a_message(returned: object, message: Message) -> Message:
    """The error reply that stands for a ClientApp call that returned `returned` (None, or
    anything else that is not a Message) instead of a reply to `message`: a fault now, not
    a silent node the server would wait for."""
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         f"the ClientApp returned {type(returned).__name__}, not a Message"),
                   reply_to=message)


def reply_records(reply: Message) -> tuple[ArrayRecord, MetricRecord]:
    """The single ArrayRecord and MetricRecord of a train reply (Flower's FedAvg contract)."""
    arrays, metrics = [], []
    for record in reply.content.values():
        if isinstance(record, ArrayRecord):
            arrays.append(record)
        elif isinstance(record, MetricRecord):
            metrics.append(record)
    if len(arrays) != 1 or len(metrics) != 1:
        raise ValueError(f"expected one ArrayRecord and one MetricRecord in the reply, found "
                         f"{len(arrays)} and {len(metrics)}")
    return arrays[0], metrics[0]


def parse_reply(reply: Message) -> TrainReply:
    """The arrays and metrics of a train reply (raises ValueError if it is malformed)."""
    try:
        arrays, metrics = reply_records(reply)
        return TrainReply(record_to_arrays(arrays), metrics, reply_kind(metrics))
    except TypeError as err:
        raise ValueError(str(err)) from err


#: the most local steps a reply may say it ran
MAX_STEPS = 10**9


def reply_steps(reply: Message | None, fallback: int | None) -> int:
    """Local steps a reply says it ran (a whole number in [0, MAX_STEPS]; anything else is
    the reply guard's to reject); else the steps dispatched; else 1."""
    if reply is not None and not reply.has_error():
        for record in reply.content.values():
            if isinstance(record, MetricRecord) and STEPS in record:
                steps = record[STEPS]
                if (isinstance(steps, (int, float)) and not isinstance(steps, bool)
                        and 0 <= steps <= MAX_STEPS and steps == int(steps)):
                    return int(steps)
    return fallback if fallback is not None else 1


def array_bytes(arrays: ArrayRecord | None) -> int:
    """Serialized size of an ArrayRecord's arrays (what travels over the network)."""
    if arrays is None:
        return 0
    return sum(len(array.data) for array in arrays.values())


def message_bytes(message: Message) -> int:
    """Serialized array bytes carried by a message (0 for an error reply)."""
    if message.has_error():
        return 0
    return sum(array_bytes(r) for r in message.content.values() if isinstance(r, ArrayRecord))


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


_npy_headers: dict[tuple[np.dtype, tuple[int, ...]], tuple[bytes, str]] = {}


def numpy_to_array(value: np.ndarray) -> Array:
    """A Flower Array holding exactly the .npy bytes `np.save` writes, built from a cached
    header and dtype name per (dtype, shape): the header is the costly part of `np.save` for
    small arrays, and a dtype's name is worked out anew each time it is asked for."""
    value = np.asarray(value)
    if not value.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
        value = value.copy(order="C")
    key = (value.dtype, value.shape)
    cached = _npy_headers.get(key)
    if cached is None:
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        cached = (buffer.getvalue()[: buffer.tell() - value.nbytes], str(value.dtype))
        if len(_npy_headers) < 4096:
            _npy_headers[key] = cached
    header, dtype_name = cached
    return _numpy_array(dtype_name, tuple(value.shape), header + value.tobytes())


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of an ArrayRecord by key, as (read-only) numpy arrays."""
    return {key: array_to_numpy(array) for key, array in record.items()}


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord that keeps the keys (and so works with torch state_dicts)."""
    return array_record({key: numpy_to_array(value) for key, value in arrays.items()})


# Records built from values asyncfl has just made. Flower's records type-check every item as
# it is set (`TypedDict.__setitem__`, a few microseconds each: about 25 per update of a small
# model), and `Array(...)` sorts out its four ways of being called. Where every key is a str
# and every value of a plain type the record accepts (checked here, with `type(v) in ...`),
# the record is an empty one of the same class copied (`TypedDict.copy`) and filled: the
# same Flower object, with the same items, as the constructor makes. Anything else, or a
# Flower whose records are laid out otherwise (checked once, below), takes the constructor.

_METRIC_TYPES = (int, float)
_CONFIG_TYPES = (int, float, str, bytes, bool)
_RECORD_TYPES = (ArrayRecord, MetricRecord, ConfigRecord)
_EMPTY: dict[type, Any] = {}


def _record(cls: type[_R], items: Mapping[str, Any], types: tuple[type, ...],
            base: _R | None = None) -> _R:
    """A `cls` record: `base` copied (else an empty one) with `items` set in order; filled
    without a check per item where every key is a str and every value's type is in `types`."""
    if not _FAST or not all(type(k) is str and type(v) in types for k, v in items.items()):
        record = base.copy() if base is not None else cls()
        for key, value in items.items():
            record[key] = value
        return record
    record = (base if base is not None else _EMPTY[cls]).copy()
    record.__dict__["_data"].update(items)
    if cls is ArrayRecord:
        record.__dict__["_is_dirty"] = True  # (what ArrayRecord.__setitem__ sets)
    return record


def _numpy_array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """`Array(dtype, shape, "numpy.ndarray", data)` for a numpy dtype name, a tuple of ints and
    bytes (numpy_to_array's), its fields set as `Array.__init__` sets them."""
    if not _FAST:
        return Array(dtype, shape, "numpy.ndarray", data)
    array = _new_array(Array)
    array.__dict__.update(_is_dirty=True, dtype=dtype, shape=shape, stype="numpy.ndarray",
                          data=data)
    return array


def metric_record(values: Mapping[str, Any]) -> MetricRecord:
    """`MetricRecord(dict(values))`."""
    return _record(MetricRecord, values, _METRIC_TYPES)


def config_record(values: Mapping[str, Any], base: ConfigRecord | None = None
                  ) -> ConfigRecord:
    """`ConfigRecord({**base, **values})`: `base` (a checked record, e.g. the run's settings
    made once) is copied, not checked again."""
    return _record(ConfigRecord, values, _CONFIG_TYPES, base)


def array_record(arrays: Mapping[str, Array]) -> ArrayRecord:
    """An ArrayRecord of Flower Arrays by key (`ArrayRecord()` with each set in order)."""
    return _record(ArrayRecord, arrays, (Array,))


def record_dict(records: Mapping[str, Any]) -> RecordDict:
    """`RecordDict(dict(records))`."""
    return _record(RecordDict, records, _RECORD_TYPES)


def _new_array(cls: type[Array]) -> Array:
    return cls.__new__(cls)


def _same(made: Any, built: Any) -> bool:
    return (type(made) is type(built) and made.__dict__ == built.__dict__
            and list(made.__dict__) == list(built.__dict__))


def _fast_records_work() -> bool:
    """Whether this Flower's records come out of `_record` and `_numpy_array` exactly as
    from their constructors (else they are always built by their constructors)."""
    global _FAST
    try:
        for cls in (ArrayRecord, MetricRecord, ConfigRecord, RecordDict):
            _EMPTY[cls] = cls()
        _FAST = True
        array = Array("float32", (2,), "numpy.ndarray", b"\0" * 8)
        arrays = ArrayRecord()
        arrays["w"] = array
        metrics = {"a": 1, "b": 0.5}
        built = (array, arrays, MetricRecord(metrics), ConfigRecord({**metrics, "c": "x"}),
                 RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}))
        made = (_numpy_array("float32", (2,), b"\0" * 8), array_record({"w": array}),
                metric_record(metrics), config_record({"c": "x"}, ConfigRecord(metrics)),
                record_dict({"arrays": arrays, "metrics": metric_record(metrics)}))
        _FAST = all(_same(m, b) for m, b in zip(made, built, strict=True))
    except Exception:  # noqa: BLE001 - any surprise: the constructors, always
        _FAST = False
    return _FAST


_FAST = False
_fast_records_work()
