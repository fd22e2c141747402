"""Updates per second of the `mean` task: asyncfl inline vs the seed-000 notebook's own loop.

    python benchmarks/mean_throughput.py [--updates 10000] [--clients 100,1000,10000] [--reps 3]

The notebook's loop keeps every client busy and, per update, scans all clients for the one
that finishes first and subtracts the elapsed time from each: O(N) per update, no messages.
asyncfl runs the same schedule (running mean, M = N, one step per task, exponential speeds)
through the ServerApp, the event loop and real Flower messages (an instruction and a reply per
update) on the inline runtime. Both are timed in this process, side by side, median of `reps`.
Prints a table and writes the raw numbers to outputs/benchmarks/mean_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import asyncfl
from asyncfl.results import markdown_table


def notebook_loop(num_clients: int, num_updates: int, seed: int = 0) -> float:
    """The notebook's loop, re-implemented as written; returns updates per second."""
    rng = np.random.default_rng(seed)
    compute_times = rng.exponential(1.0, num_clients)
    clients = [{"value": int(rng.integers(0, 1000)), "id": i, "picked": 0, "age": 0,
                "ct": ct, "ct_left": ct} for i, ct in enumerate(compute_times)]
    avg_value = float(np.mean([c["value"] for c in clients]))
    central = {"value": 0.0, "age": 0, "approx": 0.0, "difference": 0.0, "true_avg": avg_value}
    data = []
    started = time.perf_counter()
    for _ in range(num_updates):
        rc = min(clients, key=lambda c: c["ct_left"])
        min_ct = rc["ct_left"]
        for c in clients:
            c["ct_left"] -= min_ct
        staleness = central["age"] - rc["age"]
        central["age"] += 1
        central["value"] += rc["value"]
        central["approx"] = central["value"] / central["age"]
        central["difference"] = abs(central["true_avg"] - central["approx"])
        rc["picked"] += 1
        rc["age"] = central["age"]
        rc["ct_left"] = rc["ct"]
        data.append([central["age"], central["approx"], "approx", staleness])
        data.append([central["age"], avg_value, "avg", 0])
        data.append([central["age"], central["difference"], "error_abs", 0])
    return num_updates / (time.perf_counter() - started)


def asyncfl_run(num_clients: int, num_updates: int, out: Path) -> dict[str, float]:
    """asyncfl's running mean inline; update rates of the strategy loop and of the whole run."""
    started = time.perf_counter()
    result = asyncfl.simulate(strategy="running-mean", task="mean", num_clients=num_clients,
                              num_server_rounds=num_updates, local_steps=1,
                              eval_every=num_updates, delay_dist="exponential",
                              output_dir=str(out), run_name=f"mean-{num_clients}")
    total = time.perf_counter() - started
    return {"loop": result.summary["updates_per_wall_second"],
            "end_to_end": num_updates / total}


def measure(reps: int, out: str, clients=(100, 1_000, 10_000), updates: int = 10_000
            ) -> list[dict]:
    """Side by side, median of `reps`: the notebook's loop and asyncfl."""
    rows = []
    for n in clients:
        nb, ours, e2e = [], [], []
        for _ in range(reps):
            nb.append(notebook_loop(n, updates))
            measured = asyncfl_run(n, updates, Path(out))
            ours.append(measured["loop"])
            e2e.append(measured["end_to_end"])
        nb_m, ours_m = statistics.median(nb), statistics.median(ours)
        rows.append({"clients": n, "notebook_updates_per_s": nb_m,
                     "asyncfl_updates_per_s": ours_m,
                     "asyncfl_end_to_end_per_s": statistics.median(e2e),
                     "ratio_asyncfl_over_notebook": ours_m / nb_m,
                     "asyncfl_us_per_update": 1e6 / ours_m})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--clients", default="100,1000,10000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    clients = [int(x) for x in args.clients.split(",")]
    rows = measure(args.reps, args.out, clients, args.updates)
    machine = f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    print(f"mean task, {args.updates} updates, median of {args.reps}; {machine}")
    print(markdown_table(rows, list(rows[0])))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "mean_throughput.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
