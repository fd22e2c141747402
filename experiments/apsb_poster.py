"""The APSB poster's two tables: APSB vs LSGD vs A-LSGD at K = 8, and APSB's communication
cost and accuracy for K = 1, 4, 8, 16.

    python experiments/apsb_poster.py                       # digits, MnistCNN, offline
    python experiments/apsb_poster.py --dataset mnist       # once MNIST is cached
    python experiments/apsb_poster.py --dataset cifar10     # ResNet-18, once CIFAR-10 is cached

8 workers of unequal speed (per-step times 1, 1.25, 1.5, 2, 2.5, 3, 4, 6 s), virtual clock.
Every run gets the same budget of local iterations (--iterations per worker on average):
LSGD runs budget / (8 K) rounds, APSB and A-LSGD budget / K versions. Communication counts
the algorithm's transfers (APSB: a push per update and one broadcast send per new model).
Every setting runs with each seed (`--seeds`, default 3: a sweep, `asyncfl.tools.sweep`); the
tables give mean ± 95% interval across seeds. Writes outputs/apsb/table_k8.md,
table_k_sweep.md (and .csv) and prints them beside the poster's numbers; the sweep's files in
outputs/apsb/sweep/ (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args
from asyncfl.tools.sweep.execute import SweepResult
from asyncfl.tools.sweep.grid import Point
from asyncfl.tools.sweep.statistics import write_interval_table

SPEEDS = "1,1.25,1.5,2,2.5,3,4,6"
POSTER_K8 = {"mnist": {"apsb": 98.9, "lsgd": 99.2, "alsgd": 96.7},
             "cifar10": {"apsb": 65.1, "lsgd": 68.7, "alsgd": 15.9}}
POSTER_SWEEP = {"mnist": {1: (427, 98.9), 4: (104, 99.0), 8: (61, 98.6), 16: (26, 98.4)},
                "cifar10": {1: (260_000, 72.4), 4: (68_000, 70.2), 8: (32_000, 66.7),
                            16: (17_000, 60.3)}}


def point(args: argparse.Namespace, strategy: str, k: int) -> Point:
    """One run of either table: the same budget of local iterations for every run."""
    workers = len(SPEEDS.split(","))
    budget = args.iterations * workers
    versions = budget // (workers * k) if strategy == "lsgd" else budget // k
    return Point(f"{strategy}-k{k}", {
        "strategy": strategy, "local-steps": k, "num-server-rounds": versions,
        "eval-every": max(1, versions // 20)})


def row(sweep: SweepResult, name: str, strategy: str, k: int) -> dict:
    summaries = sweep.summary_of(name)
    return {"strategy": strategy, "K": k, "versions": [s["final_version"] for s in summaries],
            "accuracy_pct": [100 * s["accuracy"] for s in summaries],
            "virtual_time_s": [s["virtual_time"] for s in summaries],
            "comm_mb": [8 * (s["comm_bytes_down"] + s["comm_bytes_up"]) / 1e6
                        for s in summaries],
            "mean_staleness": [s["mean_staleness"] for s in summaries]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist", "cifar10"))
    parser.add_argument("--model", default="auto",
                        help="default: mnist-cnn on digits and mnist, resnet18 on cifar10")
    parser.add_argument("--iterations", type=int, default=160,
                        help="local iterations per worker (average) in every run")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", choices=("k8", "sweep"), help="run one of the two tables")
    parser.add_argument("--out", default="outputs/apsb")
    add_sweep_arguments(parser)
    args = parser.parse_args()
    if args.model == "auto":
        args.model = "resnet18" if args.dataset == "cifar10" else "mnist-cnn"
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    poster = "cifar10" if args.dataset == "cifar10" else "mnist"
    k8 = [] if args.only == "sweep" else [("apsb", 8), ("lsgd", 8), ("alsgd", 8)]
    k_sweep = [] if args.only == "k8" else [("apsb", k) for k in (1, 4, 8, 16)]
    runs = list(dict.fromkeys(k8 + k_sweep))  # APSB at K = 8 runs once for both tables
    fixed = {"task": args.dataset, "model": args.model, "num-clients": len(SPEEDS.split(",")),
             "delay-profile": SPEEDS, "lr": args.lr, "batch-size": args.batch_size,
             "server-lr": 1.0}  # the poster's rule: the server steps with the workers' gamma
    points = [point(args, strategy, k) for strategy, k in runs]
    sweep = sweep_from_args(args, points, fixed, out / "sweep")

    if k8:
        rows = [row(sweep, f"{name}-k8", name, 8) for name, _ in k8]
        for r in rows:
            r["poster_accuracy_pct"] = POSTER_K8[poster][r["strategy"]]
        print(f"Table 1: K = 8, {args.dataset}, {args.model} (poster: {poster}), mean ± 95% "
              f"interval over seeds {args.seeds}")
        print(write_interval_table(out / "table_k8", rows, list(rows[0])))
    if k_sweep:
        rows = [row(sweep, f"apsb-k{k}", "apsb", k) for _, k in k_sweep]
        for r in rows:
            r["poster_comm_mb"], r["poster_accuracy_pct"] = POSTER_SWEEP[poster][r["K"]]
            r["comm_x_k"] = [mb * r["K"] for mb in r["comm_mb"]]
        print("Table 2: APSB, K sweep (communication should fall as 1/K: comm_x_k about "
              "constant)")
        print(write_interval_table(out / "table_k_sweep", rows, list(rows[0])))


if __name__ == "__main__":
    main()
