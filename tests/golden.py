"""Golden outputs: fixed inline runs whose final model, events.csv and evals.csv must not change.

`python -m tests.golden record [names...]` writes, per run, `golden/<name>.json` (the csv rows
without the wall-clock column, each final array's dtype, shape and SHA-256) and
`golden/<name>.npz` (the final arrays, read back with `allow_pickle=False`), plus
`golden/RECORDED.json` (the torch, numpy and CPU kernels they were recorded with).
`tests/test_golden.py` checks them with `differences`. Re-record only for a change that is
meant to alter results, and name each changed run and why in the closing note.

What must be exact, and what may differ in the last bits
--------------------------------------------------------
Which client trains when, in what order updates are applied, their staleness, steps, example
counts, bytes, versions and rejections are decided by numpy's seeded generators and integer
bookkeeping: they are compared as strings, exactly. The float64 clock columns (virtual time,
dispatch time, duration) are sums of numpy draws: relative 1e-9.

The model and the losses come out of float32 torch kernels whose summation order depends on
the torch build and the CPU's vector width (AVX2, AVX512; measured: torch 2.14.1 and 2.15.0
agree bit for bit on one AVX512 CPU, ATEN_CPU_CAPABILITY=default does not, nor does the CPU the
first goldens were recorded on). Each float32 operation rounds by at most u = 2**-24 relative;
a run of S local steps (the sum of `steps` over its events) compounds that over S steps, and
the training map amplifies what it is given. So, with S taken from the recorded events:

- loss columns (train_loss, loss and every other eval metric but accuracy): relative
  32 u S. Measured worst, the 26 first runs, across those three builds and the old goldens:
  9.2 u S (fedsgd's eval loss: lr 0.5 on whole partitions, the most amplifying run).
- accuracy columns: at most 2 test examples flip (2 / test-set size overall, 2 / the class's
  test examples per class). Measured worst: 1 example.
- final float arrays, all of them as one vector: relative L2 distance at most 1024 u S.
  Measured worst: 197 u S (fedsgd and fedsgd-weights, 1.4e-4 at S = 12); every other run
  under 1 u S. (Per array the small bias vectors reach 533 u S: too noisy a measure.)
- integer arrays (e.g. batch-norm counters): exact.

A regression is a different client, order, count or rejection (exact columns fail at once),
or a changed rule: a step size 1% off (server_lr 0.99 in fedbuff and apsb-resumed, the
clients' lr 1% lower in fedavg and fedsgd) fails 15-24 loss cells and the model bound of each
(fedbuff: relative L2 0.0127 against a bound of 0.0044; fedsgd: 8.0e-4 against 7.3e-4).
The byte-exact SHA-256 of each array is kept beside it: two runs in ONE process must agree on
it (tested); only another build of torch or another CPU may not.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

import asyncfl
from tests.helpers import Crash, crashing_grid

GOLDEN_DIR = Path(__file__).parent / "golden"

_DIGITS = dict(num_clients=6, local_steps=3, batch_size=16, delay_dist="exponential",
               delay_jitter=0.2, eval_every=2)
_FAULTS = dict(fault_fraction=0.34, fault_kinds="nan,raise", max_faults=2)
# the server step these runs were recorded with (server-lr's default before 0 meant min(1, B/M))
_UNIT_STEP = dict(server_lr=1.0)
# FedBuff's staleness weights these runs were recorded with (the paper's; the default became
# constant later)
_PAPER_WEIGHTS = dict(staleness="polynomial")

#: run name -> simulate() keyword arguments
RUNS: dict[str, dict] = {
    "fedavg": dict(strategy="fedavg", fraction=0.5, num_server_rounds=4, **_DIGITS),
    "fedavg-epochs": dict(strategy="fedavg", num_clients=4, local_epochs=1, batch_size=32,
                          num_server_rounds=2, delay_dist="uniform"),
    "fedsgd": dict(strategy="fedsgd", num_clients=5, fraction=0.6, num_server_rounds=4,
                   lr=0.5, delay_dist="normal"),
    "fedsgd-weights": dict(strategy="fedsgd-weights", num_clients=5, fraction=0.6,
                           num_server_rounds=4, lr=0.5, delay_dist="normal"),
    "lsgd": dict(strategy="lsgd", num_server_rounds=3, **_DIGITS),
    "ssgd": dict(strategy="ssgd", num_server_rounds=4, **_DIGITS),
    "esync": dict(strategy="esync", num_server_rounds=3, server_lr=0.8, esync_eps=0.1,
                  **_DIGITS),
    "fedbuff": dict(strategy="fedbuff", **_PAPER_WEIGHTS, **_UNIT_STEP,
                    num_server_rounds=8, buffer_size=3, concurrency=4,
                    server_momentum=0.5, **_DIGITS),
    "fedbuff-yogi": dict(strategy="fedbuff", **_PAPER_WEIGHTS, num_server_rounds=8,
                         buffer_size=3, concurrency=4, server_optimizer="yogi",
                         server_beta1=0.5, **_DIGITS),
    "ca2fl": dict(strategy="ca2fl", num_server_rounds=8, buffer_size=3, concurrency=4,
                  **_UNIT_STEP, **_DIGITS),
    "fedstaleweight": dict(strategy="fedstaleweight", num_server_rounds=8, buffer_size=3,
                           concurrency=4, **_UNIT_STEP, **_DIGITS),
    "fadas": dict(strategy="fadas", num_server_rounds=8, buffer_size=3, concurrency=4,
                  server_lr=0.3, fadas_threshold=1, **_DIGITS),
    "fedasync": dict(strategy="fedasync", num_server_rounds=10, concurrency=3,
                     staleness="hinge", **_DIGITS),
    "alsgd": dict(strategy="alsgd", **_UNIT_STEP, num_server_rounds=10, concurrency=4, **_DIGITS),
    "asgd": dict(strategy="asgd", **_UNIT_STEP, num_server_rounds=10, **_DIGITS),
    "apsb": dict(strategy="apsb", **_UNIT_STEP, num_server_rounds=10, concurrency=4, **_DIGITS),
    "apsb-latency": dict(strategy="apsb", **_UNIT_STEP, num_server_rounds=10, broadcast_latency=0.7,
                         **_DIGITS),
    "running-mean": dict(strategy="running-mean", task="mean", num_clients=20,
                         num_server_rounds=60, concurrency=5, delay_dist="lognormal"),
    "fedavg-faults": dict(strategy="fedavg", num_server_rounds=4, **_FAULTS, **_DIGITS),
    "fedbuff-faults": dict(strategy="fedbuff", **_PAPER_WEIGHTS, **_UNIT_STEP,
                           num_server_rounds=8, buffer_size=2, concurrency=4, **_FAULTS,
                           **_DIGITS),
    "esync-faults": dict(strategy="esync", num_server_rounds=4, **_FAULTS, **_DIGITS),
    "fedavg-round-timeout": dict(strategy="fedavg", num_server_rounds=4, round_timeout=2.5,
                                 **_DIGITS),
    "fedbuff-resumed": dict(strategy="fedbuff", **_PAPER_WEIGHTS, **_UNIT_STEP,
                            num_server_rounds=12, buffer_size=2, concurrency=4,
                            checkpoint_every=3, **_DIGITS),
    "apsb-resumed": dict(strategy="apsb", **_UNIT_STEP, num_server_rounds=12, concurrency=4,
                         checkpoint_every=3, **_DIGITS),
    "fedbuff-norm-bound": dict(strategy="fedbuff", **_PAPER_WEIGHTS, **_UNIT_STEP,
                               num_server_rounds=6, buffer_size=2, update_norm_bound=0.5,
                               **_DIGITS),
    "fedbuff-eval-interval": dict(strategy="fedbuff", **_PAPER_WEIGHTS, **_UNIT_STEP,
                                  num_server_rounds=6, buffer_size=2,
                                  eval_interval=1.5, comm_latency=0.1, **_DIGITS),
    # the default server steps, min(1, B/M) (FedBuff's with its default, constant, staleness
    # weights: re-recorded when those defaults changed on the defaults panel's evidence)
    "fedbuff-default-step": dict(strategy="fedbuff", num_server_rounds=8, buffer_size=2,
                                 concurrency=5, **_DIGITS),
    "alsgd-default-step": dict(strategy="alsgd", num_server_rounds=10, concurrency=4,
                               **_DIGITS),
}

#: float32 unit roundoff: the relative error of one rounding
U32 = 2.0 ** -24
LOSS_RTOL_PER_STEP = 32 * U32
MODEL_RTOL_PER_STEP = 1024  # x u of the array's dtype
CLOCK_RTOL = 1e-9
CLOCK_COLUMNS = frozenset({"virtual_time", "dispatch_time", "duration"})
EXACT_COLUMNS = frozenset({"version", "version_apply", "version_dispatch", "staleness", "client",
                           "steps", "num_examples", "bytes_down", "bytes_up", "comm_messages",
                           "comm_bytes", "rejected"})
ACCURACY_FLIPS = 2


def run(name: str, output_dir: Path) -> asyncfl.SimulationResult:
    """Run one golden configuration (crash and resume for the `-resumed` ones)."""
    kwargs = dict(RUNS[name], output_dir=str(output_dir), run_name=name)
    if name.endswith("-resumed"):
        try:
            asyncfl.simulate(grid_class=crashing_grid(11), **kwargs)
        except Crash:
            pass
        else:
            raise AssertionError(f"golden run {name} did not crash before its end")
        return asyncfl.simulate(resume=True, **kwargs)
    return asyncfl.simulate(**kwargs)


def array_hash(value: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    return hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()


def outputs(result: asyncfl.SimulationResult) -> tuple[dict, dict[str, np.ndarray]]:
    """A run's rows (events.csv and evals.csv without wall_time) and model description, and
    its final arrays."""
    arrays = dict(sorted(result.final_arrays().items()))
    model = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": array_hash(v)}
             for k, v in arrays.items()}
    tables = {table: _rows(result.output_dir / f"{table}.csv") for table in ("events", "evals")}
    return {"model": model, **tables}, arrays


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


def load(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A recorded run: its rows and model description, and its final arrays."""
    data = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    with np.load(GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as npz:
        return data, {k: npz[k] for k in npz.files}


def total_steps(rows: list[dict[str, str]]) -> int:
    """S: the local steps of every event of a run (at least 1)."""
    return max(1, sum(int(r["steps"]) for r in rows if r.get("steps", "").isdigit()))


def test_counts() -> dict[str, int]:
    """Test examples of the digits task, overall ('accuracy') and per class
    ('accuracy-class-<c>'): the size of one accuracy flip."""
    from asyncfl.tasks.digits import digits_task

    labels = digits_task(1, "iid", alpha=1.0, classes_per_client=1, seed=0).y_test.numpy()
    counts = {"accuracy": len(labels)}
    counts.update({f"accuracy-class-{c}": int(n) for c, n in enumerate(np.bincount(labels))})
    return counts


def _cell_difference(column: str, got: str, want: str, steps: int,
                     counts: dict[str, int]) -> str:
    """Why two cells of a column differ beyond what the column allows, or ''."""
    if got == want:
        return ""
    if column in EXACT_COLUMNS:
        return f"{got!r} != {want!r} (exact column)"
    try:
        a, b = float(got), float(want)
    except ValueError:
        return f"{got!r} != {want!r}"
    if math.isnan(a) and math.isnan(b):
        return ""
    if column in CLOCK_COLUMNS:
        ok, allowed = math.isclose(a, b, rel_tol=CLOCK_RTOL), f"rel {CLOCK_RTOL:g}"
    elif column.startswith("accuracy") and column in counts:
        allowed_flip = ACCURACY_FLIPS / counts[column]
        ok, allowed = abs(a - b) <= allowed_flip * (1 + 1e-6), f"{ACCURACY_FLIPS} examples"
    else:
        rtol = LOSS_RTOL_PER_STEP * steps
        ok, allowed = math.isclose(a, b, rel_tol=rtol), f"rel {rtol:.3g} (32 u S, S={steps})"
    return "" if ok else f"{got} != {want} (allowed: {allowed})"


def row_differences(actual: dict, expected: dict, counts: dict[str, int] | None = None
                    ) -> list[str]:
    """Every cell of events.csv and evals.csv that differs beyond its column's tolerance."""
    counts = counts if counts is not None else test_counts()
    steps = total_steps(expected["events"])
    found = []
    for table in ("events", "evals"):
        got_rows, want_rows = actual[table], expected[table]
        if len(got_rows) != len(want_rows):
            found.append(f"{table}.csv: {len(got_rows)} rows, expected {len(want_rows)}")
            continue
        for i, (got, want) in enumerate(zip(got_rows, want_rows, strict=True)):
            if got.keys() != want.keys():
                found.append(f"{table}.csv row {i}: columns {list(got)} != {list(want)}")
                continue
            found += [f"{table}.csv row {i} {col}: {why}" for col in want
                      if (why := _cell_difference(col, got[col], want[col], steps, counts))]
    return found


def model_differences(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                      steps: int) -> list[str]:
    """Every final array whose key, dtype or shape differs, every integer array that is not
    equal, and the float arrays together if their relative L2 distance exceeds 1024 u S."""
    if list(actual) != list(expected):
        return [f"model arrays {list(actual)} != {list(expected)}"]
    found, floats = [], []
    for key, want in expected.items():
        got = actual[key]
        if got.dtype != want.dtype or got.shape != want.shape:
            found.append(f"{key}: {got.dtype}{got.shape} != {want.dtype}{want.shape}")
        elif np.issubdtype(want.dtype, np.floating):
            floats.append(key)
        elif not np.array_equal(got, want):
            found.append(f"{key}: integer array differs")
    if floats and not found:
        u = max(np.finfo(expected[k].dtype).eps / 2 for k in floats)
        distance = relative_l2(np.concatenate([actual[k].ravel() for k in floats]),
                               np.concatenate([expected[k].ravel() for k in floats]))
        bound = MODEL_RTOL_PER_STEP * u * steps
        if not distance <= bound:
            found.append(f"float arrays: relative L2 {distance:.3g} > {bound:.3g} "
                         f"(1024 u S, S={steps})")
    return found


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| in float64 (the absolute distance when want is zero)."""
    diff = float(np.linalg.norm((got.astype(np.float64) - want.astype(np.float64)).ravel()))
    scale = float(np.linalg.norm(want.astype(np.float64).ravel()))
    return diff / scale if scale > 0 else diff


def differences(name: str, result: asyncfl.SimulationResult) -> list[str]:
    """Everything in which a run differs from its recorded golden beyond the tolerances."""
    expected, expected_arrays = load(name)
    actual, arrays = outputs(result)
    return (row_differences(actual, expected)
            + model_differences(arrays, expected_arrays, total_steps(expected["events"])))


def recording_environment() -> dict[str, str]:
    """What decides the last bits of a float32 run: torch, numpy and the CPU kernels."""
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "python": platform.python_version()}


def record(names: list[str]) -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data, arrays = outputs(run(name, Path(tmp)))
            (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
            np.savez(GOLDEN_DIR / f"{name}.npz", **arrays)
            print(f"recorded {name}: {len(data['events'])} events")
    (GOLDEN_DIR / "RECORDED.json").write_text(json.dumps(recording_environment(), indent=1)
                                              + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["record"]:
        sys.exit("usage: python -m tests.golden record [run names...]")
    record(sys.argv[2:] or list(RUNS))
