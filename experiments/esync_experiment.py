"""ESync against SSGD and ASGD (FedAvg and FedBuff for reference) in a heterogeneous cluster.

SSGD also runs with a round deadline (`round-timeout`, --deadline seconds): the usual way to
keep stragglers from holding rounds back, by cutting them (after three misses in a row the
straggler is dropped), where ESync keeps everyone and gives the fast workers more steps.

    python experiments/esync_experiment.py                    # digits, 1:2:4:8, offline
    python experiments/esync_experiment.py --dataset fashion-mnist --budget 3000
    python experiments/esync_experiment.py --profile "gpu-fast*2,gpu-slow,cpu"
    python experiments/esync_experiment.py --seeds 5 --workers 2

Workers have per-step times from --profile (default 1, 2, 4, 8 s), virtual clock, every run
gets the same virtual time budget, with each seed (a sweep: `asyncfl.tools.sweep`). Writes
outputs/esync/: accuracy_vs_time.png (mean across seeds, band +- 1 std), table.md / table.csv
(as mean ± 95% interval across seeds: time to the target accuracy, speed-up over SSGD in the
same seed, final accuracy, each worker's share of the time spent computing, traffic) and the
sweep's files in sweep/ (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args
from asyncfl.tools.sweep.grid import Point
from asyncfl.tools.sweep.statistics import write_interval_table

RUNS = {
    "esync": {"strategy": "esync"},
    "ssgd": {"strategy": "ssgd"},
    "ssgd-deadline": {"strategy": "ssgd"},  # round-timeout from --deadline
    "asgd": {"strategy": "asgd", "server-lr": 1.0},  # the ESync paper's ASGD steps with lr
    "fedavg": {"strategy": "fedavg", "local-steps": 4},
    "fedbuff": {"strategy": "fedbuff", "buffer-size": 2, "local-steps": 1, "server-lr": 1.0,
                "staleness": "polynomial"},
}
COLUMNS = ("strategy", "time_to_target_s", "speedup_vs_ssgd", "final_accuracy", "versions",
           "compute_share_per_worker", "messages", "mb_moved")


def compute_shares(out: Path, workers: int, elapsed: float) -> list[float]:
    """Fraction of the run's virtual time each worker spent on tasks that were applied."""
    busy = defaultdict(float)
    with (out / "events.csv").open() as f:
        for row in csv.DictReader(f):
            if not row["rejected"]:  # a cut or failed task has no applied duration
                busy[int(row["client"])] += float(row["duration"])
    return [busy[c] / elapsed for c in range(workers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist",
                                                                "cifar10"))
    parser.add_argument("--profile", default="1,2,4,8")
    parser.add_argument("--clients", type=int, default=4, help="workers")
    parser.add_argument("--budget", type=float, default=1600.0, help="virtual seconds per run")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eps", type=float, default=0.0)
    parser.add_argument("--deadline", type=float, default=4.0,
                        help="ssgd-deadline's round timeout, virtual seconds (default 4: the "
                             "8-s worker of the default profile misses every round)")
    parser.add_argument("--out", default="outputs/esync")
    add_sweep_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    fixed = {"task": args.dataset, "num-clients": args.clients, "delay-profile": args.profile,
             "time-budget": args.budget, "num-server-rounds": 1_000_000, "lr": args.lr,
             "batch-size": args.batch_size, "esync-eps": args.eps,
             "target-accuracy": args.target}
    points = [Point(name, {
        **settings, "concurrency": args.clients if name == "fedbuff" else 0,
        "eval-every": 1 if name in ("esync", "ssgd", "fedavg") else 4,
        "round-timeout": args.deadline if name == "ssgd-deadline" else 0.0,
    }) for name, settings in RUNS.items()]
    sweep = sweep_from_args(args, points, fixed, out / "sweep")
    ssgd = [s["time_to_target_accuracy"] for s in sweep.summary_of("ssgd")]
    rows = []
    for name in RUNS:
        summaries = sweep.summary_of(name)
        hits = [np.nan if s["time_to_target_accuracy"] is None else s["time_to_target_accuracy"]
                for s in summaries]
        shares = np.mean([compute_shares(Path(r["results_dir"]), args.clients, s["virtual_time"])
                          for r, s in zip(sweep.of(name), summaries, strict=True)], axis=0)
        rows.append({
            "strategy": name, "time_to_target_s": hits,
            "speedup_vs_ssgd": [np.nan if base is None else base / hit
                                for base, hit in zip(ssgd, hits, strict=True)],
            "final_accuracy": [s["accuracy"] for s in summaries],
            "versions": [s["final_version"] for s in summaries],
            "compute_share_per_worker": " / ".join(f"{x:.2f}" for x in shares),
            "messages": [s["comm_messages_down"] + s["comm_messages_up"] for s in summaries],
            "mb_moved": [(s["comm_bytes_down"] + s["comm_bytes_up"]) / 1e6 for s in summaries],
        })
    print(f"{args.dataset}, per-step times {args.profile}, {args.budget:g} s virtual budget, "
          f"target {args.target:.0%}, mean ± 95% interval over seeds {args.seeds}")
    print(write_interval_table(out / "table", rows, COLUMNS))
    shutil.copy(out / "sweep" / "accuracy_vs_time.png", out / "accuracy_vs_time.png")


if __name__ == "__main__":
    main()
