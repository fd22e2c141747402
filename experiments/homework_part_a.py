"""The homework's Part A: FedSGD (gradients) vs FedSGD-with-weights vs FedAvg.

    python experiments/homework_part_a.py all            # a1, a2 and a3
    python experiments/homework_part_a.py a1 --dataset digits --rounds 5 --seed 10
    python experiments/homework_part_a.py a2 --runtime simulation

Defaults follow the homework: N = 100 clients, lr 0.01, C = 0.1, E = 1, B = 100, 10 rounds,
IID, seed 10 (`--preset homework`, the default for MNIST-sized data). On digits (1,437 training
images, 14 per client at N = 100) those values give every client one full-batch step a round and
nothing moves off chance in 10 rounds, so `--preset digits` (the default there) keeps the
homework's number of local steps per epoch instead: B = 2 (about 7 steps, as 600 / 100 = 6 on
MNIST) with lr 0.1. A1 always uses the learning rates the homework fixes for it.
"Non-IID" is the pathological split (two classes per client) unless --non-iid says shard (two
label-sorted shards per client, McMahan et al.'s split) or dirichlet; tables name it. Tables go
to outputs/homework/*.md and *.csv, figures to outputs/homework/*.png. `a1` exits with status
1 if FedSGD and FedSGD-with-weights differ by more than 0.02 percentage points in any round.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import asyncfl  # noqa: E402
from asyncfl.results import write_table  # noqa: E402

PRESETS = {
    "homework": dict(num_clients=100, lr=0.01, fraction=0.1, local_epochs=1, batch_size=100),
    "digits": dict(num_clients=100, lr=0.1, fraction=0.1, local_epochs=1, batch_size=2),
}
TOLERANCE_PP = 0.02
NAMES = {"fedsgd": "FedSGD", "fedsgd-weights": "FedSGD (weights)", "fedavg": "FedAvg"}


class Runner:
    """Runs one configuration and returns (summary, accuracy per round in %)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.count = 0

    @property
    def non_iid(self) -> str:
        """How tables and figures name the non-IID split, e.g. "non-IID (pathological)"."""
        return f"non-IID ({self.args.non_iid})"

    def split(self, iid: bool) -> dict:
        if iid:
            return {"partition": "iid"}
        if self.args.non_iid == "dirichlet":
            return {"partition": "dirichlet", "alpha": 0.5}
        # pathological: two classes per client; shard: two label-sorted shards per client
        return {"partition": self.args.non_iid, "classes_per_client": 2}

    def __call__(self, strategy: str, *, iid: bool = True, rounds: int | None = None,
                 **overrides) -> tuple[asyncfl.SimulationResult, list[float]]:
        self.count += 1
        settings = {**PRESETS[self.args.preset], **self.split(iid), **overrides}
        result = asyncfl.simulate(
            runtime=self.args.runtime, strategy=strategy, task=self.args.dataset,
            seed=self.args.seed, num_server_rounds=rounds or self.args.rounds,
            output_dir=str(Path(self.args.out) / "runs"), run_name=f"run{self.count:03d}",
            **settings,
        )
        with (result.output_dir / "evals.csv").open() as f:
            accuracy = [100 * float(row["accuracy"]) for row in csv.DictReader(f)]
        return result, accuracy


def a1(run: Runner, out: Path, tolerance: float) -> bool:
    """FedSGD vs FedSGD-with-weights on the homework's two scenarios, 5 rounds."""
    scenarios = {
        "lr 0.01, 100 clients IID, C 0.5": dict(lr=0.01, num_clients=100, fraction=0.5, iid=True),
        f"lr 0.1, 50 clients {run.non_iid}, C 0.2": dict(lr=0.1, num_clients=50, fraction=0.2,
                                                  iid=False),
    }
    rows, worst = [], 0.0
    for name, settings in scenarios.items():
        grad_run, grad = run("fedsgd", rounds=5, **settings)
        weights_run, weights = run("fedsgd-weights", rounds=5, **settings)
        a_final, b_final = grad_run.final_arrays(), weights_run.final_arrays()
        param_diff = max(float(abs(a_final[k] - b_final[k]).max()) for k in a_final)
        for r, (a, b) in enumerate(zip(grad, weights, strict=True)):
            rows.append({"scenario": name, "round": r, "fedsgd_acc_pct": a,
                         "fedsgd_weights_acc_pct": b, "abs_diff_pp": abs(a - b),
                         "max_param_diff_after_5": param_diff})
            worst = max(worst, abs(a - b))
    print(write_table(out / "a1", rows, list(rows[0])))
    ok = worst <= tolerance
    print(f"A1: largest difference {worst:.4f} pp (tolerance {tolerance} pp): "
          f"{'OK' if ok else 'FAILED'}")
    return ok


def a2(run: Runner, out: Path) -> None:
    """Message count and accuracy against N (C = 0.1) and against C (N = 100)."""
    for table, grid in (("a2_clients", [(n, 0.1) for n in (10, 50, 100)]),
                        ("a2_fraction", [(100, c) for c in (0.01, 0.1, 0.2)])):
        rows = []
        for n, c in grid:
            for strategy in ("fedsgd", "fedavg"):
                result, accuracy = run(strategy, num_clients=n, fraction=c)
                summary = result.summary
                sampled = max(1, round(c * n))
                assert summary["messages"] == 2 * sampled * run.args.rounds, summary
                rows.append({"algorithm": NAMES[strategy], "N": n, "C": c,
                             "clients_per_round": sampled, "messages": summary["messages"],
                             "test_accuracy_pct": accuracy[-1]})
        print(write_table(out / table, rows, list(rows[0])))
    print("message count = rounds x 2 x max(1, round(C N)): one instruction and one reply "
          "per sampled client per round (checked for every row)")


def plot(curves: dict[str, list[float]], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, accuracy in curves.items():
        ax.plot(range(len(accuracy)), accuracy, marker="o", ms=3, label=label)
    ax.set(xlabel="round", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def a3(run: Runner, out: Path) -> None:
    """Accuracy per round: local epochs; IID vs non-IID; non-IID with lr 0.001 and C 0.5."""
    epochs = {"FedSGD": run("fedsgd")[1]}
    for e in (1, 2, 4):
        epochs[f"FedAvg E={e}"] = run("fedavg", local_epochs=e)[1]
    plot(epochs, "FedSGD vs FedAvg, local epochs (IID)", out / "a3_epochs.png")
    split = {}
    for iid in (True, False):
        for strategy in ("fedsgd", "fedavg"):
            label = f"{NAMES[strategy]} {'IID' if iid else run.non_iid}"
            split[label] = run(strategy, iid=iid, rounds=15)[1]
    plot(split, f"IID vs {run.non_iid}, 15 rounds", out / "a3_iid.png")
    non_iid = {k: v for k, v in split.items() if run.non_iid in k}
    for strategy in ("fedsgd", "fedavg"):
        label = f"{NAMES[strategy]} {run.non_iid}, lr 0.001, C 0.5"
        non_iid[label] = run(strategy, iid=False, rounds=15, lr=0.001, fraction=0.5)[1]
    plot(non_iid, f"{run.non_iid}: default vs lr 0.001 and C 0.5", out / "a3_noniid.png")
    rows = [{"curve": k, "final_acc_pct": v[-1], "max_acc_pct": max(v),
             "largest_drop_pp": max(a - b for a, b in zip(v[:-1], v[1:], strict=True))}
            for k, v in {**epochs, **split, **non_iid}.items()]
    print(write_table(out / "a3", rows, list(rows[0])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exercise", choices=("a1", "a2", "a3", "all"))
    parser.add_argument("--dataset", default="digits", help="task: digits (offline) or mnist")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--non-iid", choices=("pathological", "shard", "dirichlet"),
                        default="pathological")
    parser.add_argument("--runtime", choices=("inline", "simulation"), default="inline")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_PP,
                        help="largest allowed A1 accuracy difference, percentage points")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="default: digits for --dataset digits, else homework")
    parser.add_argument("--out", default="outputs/homework")
    args = parser.parse_args()
    args.preset = args.preset or ("digits" if args.dataset == "digits" else "homework")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(args)
    ok = True
    if args.exercise in ("a1", "all"):
        ok = a1(run, out, args.tolerance)
    if args.exercise in ("a2", "all"):
        a2(run, out)
    if args.exercise in ("a3", "all"):
        a3(run, out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
