"""Time to accuracy on digits: the asynchronous strategies against FedAvg with slow stragglers.

    python experiments/fedbuff_time_to_accuracy.py [--rounds 30] [--seeds 3] [--workers 2]

50 clients, Dirichlet(0.5) label split, exponential per-step times, virtual clock. FedAvg
samples 10 clients a round and waits for the slowest; FedBuff keeps M = 10 clients busy and
steps every K = 10 updates (the same 10 updates per model version), as do CA2FL,
FedStaleWeight and FADAS (its AMSGrad step at the default server lr 0.01); FedAsync makes a
version per update. Every setting runs with each seed (a sweep: `asyncfl.tools.sweep`); the table
gives, as mean ± 95% interval across seeds, the virtual time each takes to reach the accuracy
FedAvg ends with in the same seed, and the speed-up.
Writes outputs/time_to_accuracy/: table.md / table.csv, accuracy_vs_time.png (mean across
seeds, band +- 1 std) and the sweep's files in sweep/ (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from pathlib import Path

from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args
from asyncfl.tools.sweep.grid import Point
from asyncfl.tools.sweep.statistics import write_interval_table

TASK = {"task": "digits", "num-clients": 50, "partition": "dirichlet", "alpha": 0.5,
        "delay-dist": "exponential", "delay-mean": 1.0}
RUNS = {
    "fedavg": {"strategy": "fedavg", "fraction": 0.2},
    "fedbuff": {"strategy": "fedbuff", "buffer-size": 10, "concurrency": 10,
                "staleness": "polynomial"},  # the paper's staleness weights
    "fedasync": {"strategy": "fedasync", "concurrency": 10, "mixing": 0.5},
    "ca2fl": {"strategy": "ca2fl", "buffer-size": 10, "concurrency": 10},
    "fedstaleweight": {"strategy": "fedstaleweight", "buffer-size": 10, "concurrency": 10},
    "fadas": {"strategy": "fadas", "buffer-size": 10, "concurrency": 10},
}
COLUMNS = ("strategy", "versions", "updates", "final_accuracy", "virtual_time",
           "time_to_target", "speedup_vs_fedavg", "mean_staleness")


def reach(curve: list[tuple[float, float]], target: float) -> float:
    return next((t for t, acc in curve if acc >= target), math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="FedAvg rounds")
    parser.add_argument("--out", default="outputs/time_to_accuracy")
    add_sweep_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    points = []
    for name, settings in RUNS.items():
        versions = args.rounds if name == "fedavg" else 2 * args.rounds
        if name == "fedasync":
            versions *= 10  # one version per update
        points.append(Point(name, {**settings, "num-server-rounds": versions}))
    sweep = sweep_from_args(args, points, TASK, out / "sweep")
    curves = {name: [sweep.curves[r["config_id"]] for r in sweep.of(name)] for name in RUNS}
    targets = [curve[-1][1] for curve in curves["fedavg"]]  # FedAvg's final, per seed
    fedavg_times = [reach(c, t) for c, t in zip(curves["fedavg"], targets, strict=True)]
    rows = []
    for name in RUNS:
        summaries = sweep.summary_of(name)
        hits = [reach(c, t) for c, t in zip(curves[name], targets, strict=True)]
        rows.append({
            "strategy": name, "versions": [s["final_version"] for s in summaries],
            "updates": [s["updates"] for s in summaries],
            "final_accuracy": [s["accuracy"] for s in summaries],
            "virtual_time": [s["virtual_time"] for s in summaries], "time_to_target": hits,
            "speedup_vs_fedavg": [f / h for f, h in zip(fedavg_times, hits, strict=True)],
            "mean_staleness": [s["mean_staleness"] for s in summaries],
        })
    print(f"target accuracy (FedAvg's final after {args.rounds} rounds, per seed): "
          + ", ".join(f"{t:.4f}" for t in targets))
    print(write_interval_table(out / "table", rows, COLUMNS))
    shutil.copy(out / "sweep" / "accuracy_vs_time.png", out / "accuracy_vs_time.png")


if __name__ == "__main__":
    main()
