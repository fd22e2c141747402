"""Data imbalance under asynchrony: fast and slow clients holding disjoint classes.

    python experiments/label_skew.py                  # 2 clients, then 10
    python experiments/label_skew.py --clients 2 --slowdowns 2,5,10 --budget 300

Client i holds class group i mod 2 (digits 0-4 or 5-9, `partition = label-skew`); even
clients take 1 s per local step, odd ones `slowdown` times longer. FedAvg (synchronous),
FedAsync without and with staleness weighting, FedBuff (K = 1, s(tau)), and the methods
against the fast-client bias, CA2FL, FedStaleWeight and FADAS (default server steps), with
the FedBuff they modify (s = 1), these four with K = N updates per step, are compared at
equal virtual times (the evaluator runs every --interval seconds) with centralized training
on the union (one client holding all data, 1 s per step). `--strategies` runs a subset.
Every setting runs with each seed (`--seeds`, default 3: a sweep, `asyncfl.tools.sweep`).
Writes outputs/label_skew/: accuracy_vs_time figures (mean across seeds, band +- 1 std),
per_class.png (mean accuracy per class at the end, largest slowdown), table.md / table.csv
(mean ± 95% interval across seeds of the final accuracy, the gap to centralized training in
the same seed, accuracy on the fast and the slow client's classes) and the sweep's files in
sweep/ (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args  # noqa: E402
from asyncfl.tools.sweep.execute import SweepResult  # noqa: E402
from asyncfl.tools.sweep.figures import plot_band  # noqa: E402
from asyncfl.tools.sweep.grid import Point  # noqa: E402
from asyncfl.tools.sweep.statistics import write_interval_table  # noqa: E402

STRATEGIES = {
    "fedavg": {"strategy": "fedavg"},
    "fedasync-naive": {"strategy": "fedasync", "staleness": "constant", "mixing": 0.5},
    "fedasync-poly": {"strategy": "fedasync", "staleness": "polynomial", "staleness-a": 0.5,
                      "mixing": 0.5},
    "fedbuff-poly": {"strategy": "fedbuff", "buffer-size": 1, "staleness": "polynomial",
                     "server-lr": 1.0},
    # the methods against the fast-client bias, and the FedBuff they change (s = 1); these
    # buffer K = N updates per step (staleness about 1 whatever N)
    "fedbuff-kn": {"strategy": "fedbuff", "staleness": "constant"},
    "ca2fl": {"strategy": "ca2fl"},
    "fedstaleweight": {"strategy": "fedstaleweight"},
    "fadas": {"strategy": "fadas"},
}
K_IS_N = ("fedbuff-kn", "ca2fl", "fedstaleweight", "fadas")
FAST, SLOW = range(0, 5), range(5, 10)
COLUMNS = ("clients", "slowdown", "strategy", "final_accuracy", "gap_to_central_pp",
           "fast_classes_acc", "slow_classes_acc", "updates_fast_share")


def last_eval(out: Path) -> dict[str, str]:
    with (out / "evals.csv").open() as f:
        return list(csv.DictReader(f))[-1]


def fast_share(out: Path) -> float:
    with (out / "events.csv").open() as f:
        clients = [int(r["client"]) for r in csv.DictReader(f)]
    return sum(c % 2 == 0 for c in clients) / len(clients)


def class_mean(last: dict[str, str], classes: range) -> float:
    return sum(float(last[f"accuracy-class-{c}"]) for c in classes) / len(classes)


def curves_of(sweep: SweepResult, point: str) -> list[list[tuple[float, float]]]:
    return [sweep.curves[r["config_id"]] for r in sweep.of(point)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="2,10")
    parser.add_argument("--slowdowns", default="2,5,10")
    parser.add_argument("--budget", type=float, default=300.0, help="virtual seconds per run")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--out", default="outputs/label_skew")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    add_sweep_arguments(parser)
    args = parser.parse_args()
    strategies = {name: STRATEGIES[name] for name in args.strategies.split(",")}
    clients = [int(x) for x in args.clients.split(",")]
    slowdowns = [float(x) for x in args.slowdowns.split(",")]
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    common = {"task": "digits", "local-steps": args.local_steps, "batch-size": 10, "lr": 0.1,
              "time-budget": args.budget, "num-server-rounds": 1_000_000,
              "eval-interval": args.interval}
    points = [Point("central", {"strategy": "fedavg", "num-clients": 1, "partition": "iid",
                                "delay-profile": "1"})]
    settings_of = {}
    for n in clients:
        for slowdown in slowdowns:
            for name, settings in strategies.items():
                key = f"{name}-{n}-{slowdown:g}x"
                settings_of[key] = (n, slowdown, name)
                points.append(Point(key, {
                    **settings, **({"buffer-size": n} if name in K_IS_N else {}),
                    "num-clients": n, "partition": "label-skew", "label-groups": 2,
                    "delay-profile": f"1,{slowdown:g}"}))
    sweep = sweep_from_args(args, points, common, out / "sweep")
    central = [s["accuracy"] for s in sweep.summary_of("central")]
    rows, per_class = [], {}
    for key, (n, slowdown, name) in settings_of.items():
        folders = [Path(r["results_dir"]) for r in sweep.of(key)]
        lasts = [last_eval(folder) for folder in folders]
        final = [float(last["accuracy"]) for last in lasts]
        rows.append({
            "clients": n, "slowdown": slowdown, "strategy": name, "final_accuracy": final,
            "gap_to_central_pp": [100 * (c - f) for c, f in zip(central, final, strict=True)],
            "fast_classes_acc": [class_mean(last, FAST) for last in lasts],
            "slow_classes_acc": [class_mean(last, SLOW) for last in lasts],
            "updates_fast_share": [fast_share(folder) for folder in folders],
        })
        if slowdown == max(slowdowns):
            per_class[(n, name)] = np.mean([[float(last[f"accuracy-class-{c}"])
                                             for c in range(10)] for last in lasts], axis=0)
    for n in clients:
        fig, axes = plt.subplots(1, len(slowdowns), figsize=(5 * len(slowdowns), 4),
                                 sharey=True, squeeze=False)
        for ax, slowdown in zip(axes[0], slowdowns, strict=True):
            plot_band(ax, curves_of(sweep, "central"), "centralized")
            for name in strategies:
                plot_band(ax, curves_of(sweep, f"{name}-{n}-{slowdown:g}x"), name)
            ax.set(title=f"{n} clients, slow = {slowdown:g}x", xlabel="virtual time (s)")
        axes[0][0].set_ylabel("test accuracy (mean across seeds, band +- 1 std)")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"accuracy_vs_time_{n}.png", dpi=90)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(clients), figsize=(12, 4), squeeze=False)
    for ax, n in zip(axes[0], clients, strict=True):
        width = 0.8 / len(strategies)
        for j, name in enumerate(strategies):
            ax.bar([c + j * width for c in range(10)], per_class[(n, name)], width, label=name)
        ax.axvline(4.5 + 0.4, color="gray", ls=":")
        ax.set(title=f"{n} clients, slow = {max(slowdowns):g}x (classes 0-4 fast, 5-9 slow)",
               xlabel="class", ylabel="accuracy at the end (mean across seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_class.png", dpi=90)
    print("centralized final accuracy per seed: " + ", ".join(f"{c:.4f}" for c in central))
    print(write_interval_table(out / "table", rows, COLUMNS))


if __name__ == "__main__":
    main()
