"""The engine's pure helpers: client sampling, shuffling seeds, reply checks and update norms.
numpy in, numpy out: testable on their own."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from flwr.app import MetricRecord

from asyncfl.protocol import COMPUTE_TIME, MAX_STEPS, MODEL_VERSION, NUM_EXAMPLES, STEPS

#: the most examples a reply may claim when the client's partition size is unknown
MAX_EXAMPLES = 10**9


def sample_size(fraction: float, num_clients: int, min_nodes: int = 1) -> int:
    """Clients sampled per round for fraction C of N: max(int(C * N), min_nodes), at most N
    (Flower's FedAvg rule)."""
    return max(1, min(num_clients, max(int(fraction * num_clients), min_nodes)))


def sample_clients(rng: np.random.Generator, num_clients: int, fraction: float,
                   min_nodes: int = 1) -> list[int]:
    """A seeded sample of client indices without replacement, in ascending order."""
    chosen = rng.choice(num_clients, size=sample_size(fraction, num_clients, min_nodes),
                        replace=False)
    return sorted(int(c) for c in chosen)


def task_seed(seed: int, version: int, client: int) -> int:
    """Seed for a client's local shuffling, fixed by (run seed, model version, client)."""
    digest = hashlib.blake2b(f"{seed}:{version}:{client}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


def number_problem(value: object, *, integral: bool = False, low: float = -math.inf,
                   high: float = math.inf) -> str:
    """Why `value` is not a finite number (an integral one in [low, high] where asked), or
    '': lists, strings, NaN, Inf and floats too large for an int are all caught here, so
    no reader of a metric converts one and crashes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if not math.isfinite(value):
        return f"{value!r} is not finite"
    if integral and value != int(value):
        return f"{value!r} is not a whole number"
    if not low <= value <= high:
        return f"{value!r} is outside [{low:g}, {high:g}]"
    return ""


#: metrics the server reads from a train reply: each must be a finite number in range
READ_METRICS = {MODEL_VERSION: dict(integral=True, low=0),
                STEPS: dict(integral=True, low=0, high=MAX_STEPS),
                COMPUTE_TIME: dict(low=0)}


def metric_problem(metrics: MetricRecord, shapes: dict[str, int | None] | None = None) -> str:
    """Why a reply's metrics must not be used, or '': a metric the server reads that is not a
    finite number in range (`READ_METRICS`), any NaN or Inf (it would be averaged into the
    run's metrics), or a metric that is a list where earlier replies sent a number, or
    a list of another length (`shapes`: key -> None for a number, the length for a list)."""
    for key, value in metrics.items():
        if key in READ_METRICS:
            problem = number_problem(value, **READ_METRICS[key])
        else:
            items = value if isinstance(value, list) else [value]
            problem = next((p for v in items if (p := number_problem(v))), "")
            shape = len(value) if isinstance(value, list) else None
            if not problem and shapes is not None and shapes.get(key, shape) != shape:
                seen = shapes[key]
                problem = (f"{'a list of ' + str(shape) if shape is not None else 'a number'}"
                           f" where earlier replies sent "
                           f"{'a number' if seen is None else f'a list of {seen}'}")
        if problem:
            return f"bad metric {key!r}: {problem}"
    return ""


def check_reply(
    arrays: dict[str, np.ndarray], metrics: MetricRecord, reference: dict[str, np.ndarray],
    *, version_sent: int | None = None, max_examples: int = MAX_EXAMPLES,
    weighted_by_key: str = NUM_EXAMPLES, shapes: dict[str, int | None] | None = None,
) -> str:
    """Why a parsed train reply must not touch the global model, or '' if it is usable:
    bad or absurd example counts, a model version that was not the one sent, malformed
    metrics (`metric_problem`), arrays whose keys, shapes or dtypes differ from the model's,
    NaN or Inf."""
    examples = metrics.get(weighted_by_key)
    if number_problem(examples, low=math.ulp(0.0)):
        return f"bad {weighted_by_key}: {examples!r}"
    if examples > max_examples:
        return (f"bad {weighted_by_key}: {examples!r} is more than the client holds "
                f"({max_examples})")
    problem = metric_problem(metrics, shapes)
    if problem:
        return problem
    version = metrics.get(MODEL_VERSION)
    if version_sent is not None and version is not None and version != version_sent:
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
