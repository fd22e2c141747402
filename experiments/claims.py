"""Each fleet algorithm's headline claim, on a scenario of ours: its shape, not its paper's
numbers.

    python experiments/claims.py                         # 4 claims, 3 seeds each
    python experiments/claims.py --claims ringmaster --seeds 1

- `fedcompass` (Li et al., ICLR 2024): with clients of very unequal speed and non-IID data,
  FedCompass reaches the target sooner than FedAvg (which waits for the slowest) and ends
  above FedAsync and FedBuff (whose fast clients' stale or skewed updates it groups).
  ESync, its closest relative, beside it.
- `ringmaster` (Maranjyan et al., ICML 2025): asynchronous SGD with a few clients far slower
  than the rest; discarding the gradients R or more versions old (R = the clients in
  flight) keeps their very stale steps out, which plain ASGD applies.
- `timelyfl` (Zhang et al., 2023): FedBuff whose tasks fit a time window (`work-window`)
  against FedBuff with full local work: slow clients take part more evenly and fresher.
- `mifa` (Gu et al., NeurIPS 2021): clients that are offline most of the time and hold
  skewed labels; MIFA averages every client's latest update, FedAvg only those present;
  CA2FL (Wang et al., ICLR 2024) is the asynchronous cache of the same idea.

Each run gets the same virtual time. Writes outputs/claims/<claim>/table.md / .csv (mean +-
95% interval across seeds of the final accuracy, the time to the claim's target accuracy
over the seeds that reached it, the share of seeds that did, mean staleness and the top
client's share of the updates) and the sweep's files (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

from asyncfl.results import time_to_target
from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args
from asyncfl.tools.sweep.grid import Point
from asyncfl.tools.sweep.statistics import write_interval_table

DIGITS = {"task": "digits", "batch-size": 10, "num-server-rounds": 1_000_000,
          "eval-interval": 20.0}
#: claim -> (fixed settings, target accuracy, {point: settings})
CLAIMS: dict[str, tuple[dict, float, dict[str, dict]]] = {
    "fedcompass": (
        {**DIGITS, "num-clients": 16, "partition": "dirichlet", "alpha": 0.5,
         "delay-profile": "1*4,2*4,4*4,8*4", "local-steps": 10, "time-budget": 1600.0},
        0.9,
        {"fedavg": {"strategy": "fedavg"}, "fedasync": {"strategy": "fedasync"},
         "fedbuff": {"strategy": "fedbuff"}, "esync": {"strategy": "esync"},
         "fedcompass": {"strategy": "fedcompass"}}),
    "ringmaster": (
        {**DIGITS, "num-clients": 20, "partition": "iid", "delay-profile": "1*16,40*4",
         "strategy": "asgd", "lr": 0.1, "time-budget": 300.0},
        0.9,
        {"asgd": {}, "asgd-cutoff": {"staleness-cutoff": 20}}),
    "timelyfl": (
        {**DIGITS, "num-clients": 20, "partition": "dirichlet", "alpha": 0.5,
         "delay-dist": "lognormal", "delay-mean": 1.0, "delay-std": 1.0, "local-steps": 10,
         "strategy": "fedbuff", "time-budget": 600.0},
        0.9,
        {"fedbuff": {}, "fedbuff-window": {"work-window": 5.0}}),
    "mifa": (
        {**DIGITS, "num-clients": 20, "partition": "dirichlet", "alpha": 0.1,
         "local-steps": 5, "availability": "exponential", "availability-on": 30.0,
         "availability-off": 90.0, "time-budget": 1200.0},
        0.8,
        {"fedavg": {"strategy": "fedavg"}, "mifa": {"strategy": "mifa"},
         "ca2fl": {"strategy": "ca2fl"}}),
}
COLUMNS = ("strategy", "final_accuracy", "time_to_target", "reached", "mean_staleness",
           "top_share")


def outcome(folder: Path, target: float) -> dict:
    """One run's final accuracy, time to `target` (None: never), staleness, top share."""
    with (folder / "evals.csv").open() as f:
        evals = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    summary = json.loads((folder / "summary.json").read_text())
    return {"final": evals[-1]["accuracy"], "time": time_to_target(evals, target),
            "staleness": summary["mean_staleness"],
            "top_share": summary["participation"]["top_share"]}


def claim_table(args: argparse.Namespace, claim: str, out: Path) -> str:
    fixed, target, points = CLAIMS[claim]
    fixed = {**fixed, "time-budget": fixed["time-budget"] * args.scale}
    sweep = sweep_from_args(args, [Point(name, s) for name, s in points.items()], fixed,
                            out / claim / "sweep")
    rows = []
    for name in points:
        runs = [outcome(Path(r["results_dir"]), target) for r in sweep.of(name)]
        times = [r["time"] for r in runs if r["time"] is not None]
        rows.append({"strategy": name, "final_accuracy": [r["final"] for r in runs],
                     "time_to_target": times if len(times) > 1 else
                     (times[0] if times else "never"),
                     "reached": f"{len(times)}/{len(runs)}",
                     "mean_staleness": [r["staleness"] for r in runs],
                     "top_share": [r["top_share"] for r in runs]})
    table = write_interval_table(out / claim / "table", rows, COLUMNS)
    return f"{claim} (target accuracy {target}, {fixed['time-budget']:.0f} virtual s):\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", default=",".join(CLAIMS))
    parser.add_argument("--out", default="outputs/claims")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every claim's virtual time budget (small test runs)")
    add_sweep_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    for claim in args.claims.split(","):
        print(claim_table(args, claim, Path(args.out)))


if __name__ == "__main__":
    main()
