"""Defaults that win? Every asynchronous strategy at its defaults against FedAvg at its
defaults, on a panel of 12 scenarios, at equal virtual time.

    python experiments/defaults.py --label after             # the panel, 3 seeds
    python experiments/defaults.py --label after --strategies fedbuff,asgd --fallback before

Each scenario names only what a user would choose for their fleet: the task (digits or
synthetic), N, the split and the delay model; every other setting is left at its default,
but `local-steps` = 5 (A-LSGD and ESync need a step count) and, for the 300- and
1,000-client scenarios, fewer rounds (the compute of this machine). FedAvg runs its rounds
(`num-server-rounds`, 10 by default) and takes T virtual seconds; each asynchronous
strategy then gets 2T (`time-budget`), or `UPDATES_CAP` times FedAvg's updates if that
comes first, evaluated every T / 20. Reported per strategy and
scenario, mean +- 95% interval over the seeds: the speed-up (FedAvg's time to its own final
accuracy F over the strategy's time to F; 0 where it never reached F), the accuracy at T
and at 2T, and the fleet's throughput cap (`throughput_cap`: to first order, the most a
strategy whose update is one client's task can gain on FedAvg). FedAvg's runs are shared by
every label (its defaults are not in question).

Writes outputs/defaults/<label>/: table.md / table.csv (every strategy x scenario),
summary.md (per strategy: the scenarios where it reached F at least 2x sooner, those
where its accuracy at 2T is within 0.5 points of F, and its median speed-up, also as a share
of the cap) and the sweeps' files (a rerun skips
finished runs). `--fallback L` takes the strategies this label did not run from label L's
runs (their defaults did not change between the two).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asyncfl.config import BUFFERED_STRATEGIES, validate_run_config
from asyncfl.server_app import make_delays
from asyncfl.tools.sweep.cli import add_sweep_arguments, sweep_from_args
from asyncfl.tools.sweep.execute import read_csv_rows, read_curves
from asyncfl.tools.sweep.grid import Point, coerce, parse_seeds
from asyncfl.tools.sweep.statistics import t_interval, write_interval_table

COMMON = {"local-steps": 5, "parallel-clients": "auto"}
SCENARIOS: dict[str, dict[str, Any]] = {
    "digits-10": {"task": "digits", "num-clients": 10},
    "digits-20-exp": {"task": "digits", "num-clients": 20, "delay-dist": "exponential"},
    "digits-20-uniform": {"task": "digits", "num-clients": 20, "delay-dist": "uniform"},
    "digits-20-two-class": {"task": "digits", "num-clients": 20, "delay-profile": "1*10,5*10"},
    "digits-20-heavy": {"task": "digits", "num-clients": 20, "delay-std": 1.0},
    "digits-30": {"task": "digits", "num-clients": 30},
    "digits-30-dir0.5": {"task": "digits", "num-clients": 30, "partition": "dirichlet",
                         "alpha": 0.5},
    "digits-20-dir0.1": {"task": "digits", "num-clients": 20, "partition": "dirichlet",
                         "alpha": 0.1},
    "synthetic-100": {"task": "synthetic", "num-clients": 100},
    "synthetic-100-exp": {"task": "synthetic", "num-clients": 100, "delay-dist": "exponential"},
    "synthetic-300": {"task": "synthetic", "num-clients": 300, "num-server-rounds": 4},
    "synthetic-1000-uniform": {"task": "synthetic", "num-clients": 1000,
                               "delay-dist": "uniform", "num-server-rounds": 4},
}
ASYNC = ("fedbuff", "fedasync", "ca2fl", "fedstaleweight", "fadas", "alsgd", "asgd", "apsb",
         "fedcompass")
COLUMNS = ("scenario", "strategy", "speedup", "cap", "accuracy_at_T", "accuracy_at_2T",
           "fedavg_final")
#: a run stops at 2T or after this many times FedAvg's updates, whichever comes first: with
#: exponential speeds the fastest of 20 clients can take 0.001 s a step and send a hundred
#: thousand updates in 2T (hours of wall time for a result its first thousands decide)
UPDATES_CAP = 20
#: accuracy points a strategy may end below FedAvg's final accuracy and still count as even
TOLERANCE = 0.005


def read_runs(folder: Path) -> tuple[list[dict[str, str]], dict[str, list[tuple[float, float]]]]:
    """A sweep folder's finished runs and its accuracy curves by config_id."""
    runs = [r for r in read_csv_rows(folder / "runs.csv") if r["status"] == "ok"]
    return runs, {k: sorted(v) for k, v in read_curves(folder).items()}


def first_time(curve: Sequence[tuple[float, float]], target: float) -> float:
    """The first evaluation time at which accuracy reached `target` (inf: never)."""
    return next((t for t, a in curve if a >= target), math.inf)


def accuracy_at(curve: Sequence[tuple[float, float]], when: float) -> float:
    """The accuracy of the last evaluation at or before `when`."""
    return [a for t, a in curve if t <= when * (1 + 1e-9)][-1]


def throughput_cap(settings: Mapping[str, Any], seed: int) -> float:
    """mean(1 / c_i) x max(c_i) over the clients' step times c_i: an asynchronous strategy
    whose update is one client's task makes updates that much faster than FedAvg, whose
    round waits for the slowest client. To first order (no jitter, no network, equal work
    per update) its speed-up can be no larger; ASGD's one-gradient updates are not bound."""
    config = validate_run_config({**COMMON, **settings, "seed": seed})
    times = np.asarray(make_delays(config).step_times[:config["num-clients"]])
    return float(np.mean(1 / times) * times.max())


def fedavg_reference(args: argparse.Namespace, out: Path) -> dict[tuple[str, int], dict]:
    """FedAvg's T (virtual time of its rounds), final accuracy F and time to F, and the
    fleet's throughput cap, per (scenario, seed)."""
    points = [Point(name, {**settings, "strategy": "fedavg"})
              for name, settings in SCENARIOS.items()]
    sweep = sweep_from_args(args, points, COMMON, out / "fedavg")
    reference = {}
    for name in SCENARIOS:
        for row in sweep.of(name):
            curve = sweep.curves[row["config_id"]]
            final = curve[-1][1]
            reference[name, int(row["seed"])] = {
                "T": float(row["virtual_time"]), "F": final, "t_F": first_time(curve, final),
                "cap": throughput_cap(SCENARIOS[name], int(row["seed"]))}
    return reference


def parse_tries(entries: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--set strategy:key=value,key=value` entries as run-config settings per strategy."""
    tries: dict[str, dict[str, Any]] = {}
    for entry in entries:
        strategy, _, pairs = entry.partition(":")
        for pair in pairs.split(","):
            key, _, raw = pair.partition("=")
            tries.setdefault(strategy, {})[key] = coerce(key, raw)
    return tries


def versions_cap(settings: Mapping[str, Any], strategy: str) -> int:
    """The versions `UPDATES_CAP` times FedAvg's updates (N x its rounds) make."""
    config = validate_run_config({**settings, "strategy": "fedavg"})
    updates = UPDATES_CAP * config["num-clients"] * config["num-server-rounds"]
    return max(1, updates // (config["buffer-size"] if strategy in BUFFERED_STRATEGIES else 1))


def run_label(args: argparse.Namespace, reference: Mapping[tuple[str, int], dict],
              strategies: Sequence[str], folder: Path) -> None:
    """Every strategy on every scenario, one sweep per seed (each seed's T differs)."""
    tries = parse_tries(args.set)
    tried = {(name, strategy): {**settings, **tries.get(strategy, {})}
             for name, settings in SCENARIOS.items() for strategy in strategies}
    for seed in parse_seeds(args.seeds):
        points = [Point(f"{name}/{strategy}", {
            **settings, "strategy": strategy,
            "num-server-rounds": versions_cap(settings, strategy),
            "time-budget": 2 * reference[name, seed]["T"],
            "eval-interval": reference[name, seed]["T"] / 20,
            "target-accuracy": reference[name, seed]["F"]})
            for (name, strategy), settings in tried.items()]
        seed_args = argparse.Namespace(**{**vars(args), "seeds": f"{seed},"})  # a list of one
        sweep_from_args(seed_args, points, COMMON, folder)


def panel_rows(reference: Mapping[tuple[str, int], dict], folders: Sequence[Path],
               strategies: Sequence[str]) -> list[dict[str, Any]]:
    """Per (scenario, strategy): per-seed speed-ups and accuracies at T and 2T, from the
    first of `folders` that holds the strategy's runs."""
    found: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = {}
    for folder in reversed(folders):  # the first folder wins
        runs, curves = read_runs(folder)
        by_point: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = {}
        for row in runs:
            scenario, strategy = row["point"].split("/")
            by_point.setdefault((scenario, strategy), {})[int(row["seed"])] = \
                curves[row["config_id"]]
        found |= by_point
    rows = []
    for scenario in SCENARIOS:
        seeds = sorted(s for (name, s) in reference if name == scenario)
        fed = [reference[scenario, s] for s in seeds]
        for strategy in strategies:
            curves = found.get((scenario, strategy), {})
            if sorted(curves) != seeds:
                continue
            speedups, at_t, at_2t = [], [], []
            for seed, ref in zip(seeds, fed, strict=True):
                curve = curves[seed]
                speedups.append(ref["t_F"] / first_time(curve, ref["F"]))
                at_t.append(accuracy_at(curve, ref["T"]))
                at_2t.append(accuracy_at(curve, 2 * ref["T"]))
            rows.append({"scenario": scenario, "strategy": strategy, "speedup": speedups,
                         "cap": [r["cap"] for r in fed], "accuracy_at_T": at_t,
                         "accuracy_at_2T": at_2t, "fedavg_final": [r["F"] for r in fed]})
    return rows


def strategy_summary(rows: Sequence[Mapping[str, Any]], strategies: Sequence[str]) -> str:
    """Per strategy: on how many scenarios the mean speed-up is >= 2 and the mean accuracy
    at 2T >= F - 0.5 points, both, on how many the fleet's mean throughput cap is below 2,
    and its median speed-up, also as a share of each scenario's cap."""
    lines = ["| strategy | scenarios | >= 2x sooner | at 2T >= F - 0.5 pt | both | cap < 2 | "
             "median speed-up | median speed-up / cap |", "|---|---|---|---|---|---|---|---|"]
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        fast = [t_interval(r["speedup"])[0] >= 2 for r in mine]
        even = [t_interval(r["accuracy_at_2T"])[0] >= t_interval(r["fedavg_final"])[0]
                - TOLERANCE for r in mine]
        both = sum(f and e for f, e in zip(fast, even, strict=True))
        capped = sum(t_interval(r["cap"])[0] < 2 for r in mine)
        median = upper_median([t_interval(r["speedup"])[0] for r in mine])
        of_cap = upper_median([t_interval(r["speedup"])[0] / t_interval(r["cap"])[0]
                               for r in mine])
        lines.append(f"| {strategy} | {len(mine)} | {sum(fast)} | {sum(even)} | {both} | "
                     f"{capped} | {median:.2f} | {of_cap:.2f} |")
    return "\n".join(lines) + "\n"


def upper_median(values: Sequence[float]) -> float:
    """The middle value (of two, the larger); nan for none."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="names this panel's folder")
    parser.add_argument("--strategies", default=",".join(ASYNC))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--fallback", default="",
                        help="a label whose runs stand in for the strategies not run here")
    parser.add_argument("--set", action="append", default=[], metavar="STRATEGY:KEY=V,...",
                        help="try settings other than the defaults for one strategy")
    parser.add_argument("--out", default="outputs/defaults")
    add_sweep_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out)
    for name in set(SCENARIOS) - set(args.scenarios.split(",")):
        del SCENARIOS[name]
    began = time.perf_counter()
    reference = fedavg_reference(args, out)
    strategies = args.strategies.split(",")
    run_label(args, reference, strategies, out / args.label / "sweep")
    folders = [out / args.label / "sweep"]
    if args.fallback:
        folders.append(out / args.fallback / "sweep")
    rows = panel_rows(reference, folders, ASYNC)
    print(write_interval_table(out / args.label / "table", rows, COLUMNS))
    summary = strategy_summary(rows, ASYNC)
    (out / args.label / "summary.md").write_text(summary)
    print(summary)
    print(f"panel: {time.perf_counter() - began:.0f} s wall")


if __name__ == "__main__":
    main()
