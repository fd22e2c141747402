"""Seed 000: asynchronous averaging of client values under Normal / Exponential / Uniform
compute times, with the running mean, FedAsync and FedBuff.

    python experiments/seed000_async_mean.py                 # 100x1000 and 1000x10000
    python experiments/seed000_async_mean.py --sizes 100x1000

Writes outputs/seed000/: one results folder per run, `<dist>-<N>x<U>-panels.png` (the
notebook's four panels for the running mean) and table.md / table.csv (final error, mean and
max staleness, share of updates from the fastest 10% of clients).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
from pathlib import Path

import asyncfl
from asyncfl.plots import plot_async_mean
from asyncfl.results import write_table

DISTRIBUTIONS = {
    "normal": dict(delay_dist="normal", delay_mean=15.0, delay_std=3.0),
    "exponential": dict(delay_dist="exponential", delay_mean=1.0),
    "uniform": dict(delay_dist="uniform", delay_low=1.0, delay_high=20.0),
}
STRATEGIES = {
    "running-mean": dict(strategy="running-mean"),
    "fedasync": dict(strategy="fedasync", mixing=0.5, staleness="polynomial"),
    "fedbuff": dict(strategy="fedbuff", buffer_size=10, staleness="polynomial"),
}
# FedBuff applies deltas computed from stale versions: a server step of gamma with staleness
# tau ~ M / K is stable only for gamma of order 1 / tau, so gamma = K / M here (with gamma = 1
# the estimate diverges on these runs; see docs/asynchrony.md).
COLUMNS = ("strategy", "distribution", "clients", "updates", "abs_error", "mean_staleness",
           "max_staleness", "fast_10pct_share", "wall_s")


def fast_share(out: Path) -> float:
    """Share of updates that came from the fastest 10% of clients."""
    with (out / "clients.csv").open() as f:
        clients = sorted(csv.DictReader(f), key=lambda c: float(c["step_time"]))
    fast = clients[: max(1, len(clients) // 10)]
    total = sum(int(c["updates"]) for c in clients)
    return sum(int(c["updates"]) for c in fast) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100x1000,1000x10000",
                        help="comma-separated CLIENTSxUPDATES")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/seed000")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    rows = []
    for size in args.sizes.split(","):
        n, updates = (int(x) for x in size.split("x"))
        for dist, delay in DISTRIBUTIONS.items():
            for name, strategy in STRATEGIES.items():
                versions = updates // strategy.get("buffer_size", 1)
                if name == "fedbuff":
                    strategy = {**strategy, "server_lr": strategy["buffer_size"] / n}
                run_name = f"{name}-{dist}-{n}x{updates}"
                shutil.rmtree(out / run_name, ignore_errors=True)
                result = asyncfl.simulate(
                    task="mean", num_clients=n, num_server_rounds=versions, local_steps=1,
                    eval_every=max(1, versions // 500), seed=args.seed, output_dir=str(out),
                    run_name=run_name, **strategy, **delay,
                )
                s = result.summary
                rows.append({
                    "strategy": name, "distribution": dist, "clients": n,
                    "updates": s["updates"], "abs_error": s["abs-error"],
                    "mean_staleness": s["mean_staleness"], "max_staleness": s["max_staleness"],
                    "fast_10pct_share": fast_share(result.output_dir), "wall_s": s["wall_time"],
                })
                if name == "running-mean":
                    panels = plot_async_mean(result.output_dir,
                                             f"running mean, {dist}, {n} clients x {updates}")
                    shutil.copy(panels, out / f"{dist}-{n}x{updates}-panels.png")
                print(f"{run_name}: error {s['abs-error']:.3f}, "
                      f"staleness mean {s['mean_staleness']:.1f} max {s['max_staleness']}")
    print(write_table(out / "table", rows, COLUMNS))


if __name__ == "__main__":
    main()
