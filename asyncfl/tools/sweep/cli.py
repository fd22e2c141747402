"""Sweeps: a grid of settings x several seeds, run in parallel, summarized with 95% intervals.

One run's number cannot tell whether a 3-point difference between two strategies is real;
the same comparison over several seeds, with a confidence interval, can. Every (grid point,
seed) is one `simulate` run with its own results folder under `<output-dir>/runs/`. Runs go
to parallel local processes (`--workers`, default: the cores) or, with `--ray-address`, to an
existing Ray cluster as Ray tasks. The sweep writes, in `--output-dir`:

- runs.csv: one row per run (grid values, seed, status, final accuracy, time to target,
  virtual time, updates, messages, bytes, wall time, results folder, error), appended as runs
  finish, so an interrupted sweep resumes: rerun the same command and the runs whose
  settings already have an `ok` row are skipped; `failed` rows are run again;
- curves.csv: every run's test accuracy against virtual time (the figures need no results
  folder, which on a cluster may sit on another machine);
- summary.csv: per grid point, `<metric>_mean`, `<metric>_std` (sample, ddof = 1) and
  `<metric>_ci95` (half-width of the Student-t 95% interval of the mean) across its seeds;
  time to target over the runs that reached it (`target_reached` counts them);
- accuracy_vs_time.png (mean across seeds, band: +- one standard deviation) and
  time_to_target.png (mean, whiskers: the 95% interval).

Usage: `asyncfl-sweep --grid "strategy=fedavg,fedbuff buffer-size=5,10" --seeds 3
--run-config "num-server-rounds=20" --output-dir outputs/sweep`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncfl.config import ConfigError
from asyncfl.tools.processes import freeze_before_exit
from asyncfl.tools.sweep.execute import SweepResult, run_sweep
from asyncfl.tools.sweep.grid import Point, grid_points, parse_grid, parse_seeds


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """--seeds, --workers and --ray-address, for the sweep command and the experiment scripts
    that run their settings as a sweep."""
    parser.add_argument("--seeds", default="3", help="a count (3: seeds 0,1,2) or a list")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel local processes (default: the cores)")
    parser.add_argument("--ray-address", default="",
                        help="run every (point, seed) as a Ray task on this existing cluster "
                             "(host:port of `ray start --head`)")


def sweep_from_args(args: argparse.Namespace, points: Sequence[Point],
                    fixed: Mapping[str, Any], output_dir: Path) -> SweepResult:
    """An experiment's points over `--seeds` (with `--workers` / `--ray-address`); stops
    the script, naming the runs, if any failed (rerunning it reruns only those)."""
    result = run_sweep(points, parse_seeds(args.seeds), fixed, output_dir,
                       workers=args.workers, ray_address=args.ray_address)
    if result.failed:
        names = ", ".join(f"{r['point']} seed {r['seed']}" for r in result.failed)
        raise SystemExit(f"{len(result.failed)} runs failed ({names}): see "
                         f"{result.output_dir / 'runs.csv'}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The `asyncfl-sweep` command; `argv` None (the command itself, whose process ends
    after it) also freezes what is alive for a quick exit (`freeze_before_exit`)."""
    try:
        return sweep_command(argv)
    finally:
        if argv is None:
            freeze_before_exit()


def sweep_command(argv: list[str] | None) -> int:
    from asyncfl.tools.run_config import parse_run_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="",
                        help="key=v1,v2 pairs, space-separated: the product is swept")
    parser.add_argument("--run-config", default="", help="fixed settings, as for flwr run")
    parser.add_argument("--output-dir", default="outputs/sweep")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        result = run_sweep(grid_points(parse_grid(args.grid)), parse_seeds(args.seeds),
                     parse_run_config(args.run_config), args.output_dir, workers=args.workers,
                     ray_address=args.ray_address)
    except ConfigError as err:
        print(f"asyncfl-sweep: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asyncfl-sweep: interrupted; the same command resumes it", file=sys.stderr)
        return 130
    print(f"asyncfl-sweep: {len(result.runs)} runs, summary in {result.output_dir}/summary.csv")
    if result.failed:
        print(f"asyncfl-sweep: {len(result.failed)} runs failed (see runs.csv); the same "
              "command reruns them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
