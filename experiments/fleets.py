"""Fleets as they are: clients that come and go, links of unequal speed, and the algorithms
built for them, side by side.

    python experiments/fleets.py                      # 3 x 2 x 8 settings, 3 seeds each
    python experiments/fleets.py --seeds 1 --strategies fedavg,mifa --budget 200

20 digits clients (Dirichlet 0.5 label skew, lognormal speeds: mean 1 s a step, std 1 s), 5
local steps a task, each run given the same virtual time (`--budget`). Availability: always
online; `churn` (exponential online and offline periods, mean 60 s each); `sparse` (online 30
s, offline 90 s on average: a quarter online at a time). Networks: none (instant transfers) or
`mixed`: half the clients on a LAN, a quarter on a constrained link (200 KB/s down, 20 KB/s
up, 50 ms), a quarter on a poor one (50 KB/s down, 10 KB/s up, 200 ms); the model is 56 KB.
Strategies at their defaults: FedAvg, FedBuff, CA2FL, MIFA, ESync, FedCompass, FedAsync, and
FedAsync with Ringmaster's staleness cutoff R = 20 (= the clients in flight). Writes
outputs/fleets/: table.md / table.csv (mean +- 95% interval across seeds of the final
accuracy, the best accuracy seen, the share of tasks lost to clients leaving, and the
updates applied), accuracy_vs_time.png, and the sweep's files in sweep/ (a rerun skips
finished runs).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args  # noqa: E402
from asyncfl.tools.sweep.figures import plot_band  # noqa: E402
from asyncfl.tools.sweep.grid import Point  # noqa: E402
from asyncfl.tools.sweep.statistics import write_interval_table  # noqa: E402

CLIENTS = 20
AVAILABILITY = {
    "always": {"availability": "always"},
    "churn": {"availability": "exponential", "availability-on": 60.0, "availability-off": 60.0},
    "sparse": {"availability": "exponential", "availability-on": 30.0,
               "availability-off": 90.0},
}
NETWORKS = {
    "none": {},
    "mixed": {"comm-profile": "lan*2,0.05:2e5:2e4,0.2:5e4:1e4"},  # cycled: 10 / 5 / 5
}
STRATEGIES = {
    "fedavg": {"strategy": "fedavg"},
    "fedbuff": {"strategy": "fedbuff"},
    "ca2fl": {"strategy": "ca2fl"},
    "mifa": {"strategy": "mifa"},
    "esync": {"strategy": "esync"},
    "fedcompass": {"strategy": "fedcompass"},
    "fedasync": {"strategy": "fedasync"},
    "fedasync-cutoff": {"strategy": "fedasync", "staleness-cutoff": CLIENTS},
}
COLUMNS = ("availability", "network", "strategy", "final_accuracy", "best_accuracy",
           "lost_share", "updates")


def outcome(folder: Path) -> tuple[float, float, float, int]:
    """(final accuracy, best accuracy, share of tasks lost, updates applied) of one run."""
    with (folder / "evals.csv").open() as f:
        accuracies = [float(r["accuracy"]) for r in csv.DictReader(f)]
    with (folder / "events.csv").open() as f:
        rows = list(csv.DictReader(f))
    lost = sum(r["rejected"].startswith("unavailable") for r in rows)
    applied = sum(not r["rejected"] for r in rows)
    return accuracies[-1], max(accuracies), lost / max(1, len(rows)), applied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=400.0, help="virtual seconds a run")
    parser.add_argument("--interval", type=float, default=20.0)
    parser.add_argument("--out", default="outputs/fleets")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--availability", default=",".join(AVAILABILITY))
    parser.add_argument("--networks", default=",".join(NETWORKS))
    add_sweep_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    common = {"task": "digits", "num-clients": CLIENTS, "partition": "dirichlet", "alpha": 0.5,
              "delay-dist": "lognormal", "delay-mean": 1.0, "delay-std": 1.0,
              "local-steps": 5, "batch-size": 10, "time-budget": args.budget,
              "num-server-rounds": 1_000_000, "eval-interval": args.interval}
    settings_of, points = {}, []
    for availability in args.availability.split(","):
        for network in args.networks.split(","):
            for name in args.strategies.split(","):
                key = f"{name}-{availability}-{network}"
                settings_of[key] = (availability, network, name)
                points.append(Point(key, {**STRATEGIES[name], **AVAILABILITY[availability],
                                          **NETWORKS[network]}))
    sweep = sweep_from_args(args, points, common, out / "sweep")
    rows = []
    for key, (availability, network, name) in settings_of.items():
        outcomes = [outcome(Path(r["results_dir"])) for r in sweep.of(key)]
        rows.append({"availability": availability, "network": network, "strategy": name,
                     "final_accuracy": [o[0] for o in outcomes],
                     "best_accuracy": [o[1] for o in outcomes],
                     "lost_share": [o[2] for o in outcomes],
                     "updates": [o[3] for o in outcomes]})
    availabilities, networks = args.availability.split(","), args.networks.split(",")
    fig, axes = plt.subplots(len(networks), len(availabilities), sharey=True, squeeze=False,
                             figsize=(5 * len(availabilities), 3.6 * len(networks)))
    for i, network in enumerate(networks):
        for j, availability in enumerate(availabilities):
            ax = axes[i][j]
            for name in args.strategies.split(","):
                key = f"{name}-{availability}-{network}"
                plot_band(ax, [sweep.curves[r["config_id"]] for r in sweep.of(key)], name)
            ax.set(title=f"availability {availability}, network {network}",
                   xlabel="virtual time (s)", ylim=(0, 1))
        axes[i][0].set_ylabel("test accuracy (mean, band +- 1 std)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{CLIENTS} digits clients, Dirichlet 0.5, lognormal speeds; "
                 f"{args.seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=90)
    print(write_interval_table(out / "table", rows, COLUMNS))


if __name__ == "__main__":
    main()
