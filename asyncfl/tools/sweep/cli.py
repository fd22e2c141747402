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
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

from asyncfl.config import SETTINGS_BY_KEY, ConfigError, validate_run_config
from asyncfl.results import check_writable

#: keys the sweep sets for every run itself
RESERVED = ("seed", "output-dir", "run-name", "launch-id", "resume")
#: per-run numbers in runs.csv that summary.csv aggregates
METRICS = ("final_accuracy", "time_to_target", "virtual_time", "updates", "messages", "bytes",
           "wall_time")
RUN_COLUMNS = ("point", "seed", "status", *METRICS, "results_dir", "config_id", "error")
CURVE_COLUMNS = ("config_id", "virtual_time", "accuracy")
#: longest run-name made from a grid point (longer ones become p<index>-<config id>)
NAME_MAX = 80
VALUE = re.compile(r"""'[^']*'|"[^"]*"|[^,]+""")


@dataclass(frozen=True)
class Point:
    """One setting of the sweep: a name (shown in tables and figures) and its run-config."""

    name: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    """One (point, seed) of a sweep; `config_id` fingerprints its whole validated config, so
    a resumed sweep skips a run only if nothing about it changed."""

    point: Point
    seed: int
    config_id: str
    run_name: str
    overrides: Mapping[str, Any]


@dataclass
class SweepResult:
    """The sweep's rows (this sweep's runs only, one per run) and where its files are."""

    output_dir: Path
    runs: list[dict[str, str]]
    summary: list[dict[str, Any]]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, str]]:
        """The rows of the runs that failed."""
        return [r for r in self.runs if r["status"] != "ok"]

    def of(self, point: str) -> list[dict[str, str]]:
        """The finished runs of one point, by seed."""
        return sorted((r for r in self.runs if r["point"] == point and r["status"] == "ok"),
                      key=lambda r: int(r["seed"]))

    def summary_of(self, point: str) -> list[dict[str, Any]]:
        """summary.json of each finished run of one point, by seed."""
        return [json.loads((Path(r["results_dir"]) / "summary.json").read_text())
                for r in self.of(point)]


def coerce(key: str, raw: str) -> Any:
    """A grid value written on the command line, as the type its run-config key takes."""
    if key not in SETTINGS_BY_KEY:
        raise ConfigError(f"--grid: unknown run-config key {key!r}; known keys: "
                          f"{', '.join(SETTINGS_BY_KEY)}")
    kind = SETTINGS_BY_KEY[key].type
    text = raw.strip()
    if kind is str:
        return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"--grid: run-config '{key}' = {text!r} is not a {kind.__name__}"
                          ) from None


def parse_grid(text: str) -> dict[str, list[Any]]:
    """`"strategy=fedavg,fedbuff buffer-size=5,10"` -> {key: values}; a string value holding
    commas is quoted (`delay-profile='1,2','1,8'`)."""
    grid: dict[str, list[Any]] = {}
    for token in re.findall(r"""(?:[^\s'"]|'[^']*'|"[^"]*")+""", text):
        key, sep, values = token.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid: cannot read {token!r}; write key=value1,value2 pairs "
                              "separated by spaces")
        if key in grid:
            raise ConfigError(f"--grid: run-config '{key}' is listed twice")
        if key in RESERVED:
            raise ConfigError(f"--grid: run-config '{key}' is set by the sweep"
                              + (" (use --seeds)" if key == "seed" else ""))
        grid[key] = [coerce(key, v) for v in VALUE.findall(values)]
    return grid


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: a count ("3": seeds 0, 1, 2) or a comma-separated list ("0,5,7")."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds = {text!r}: allowed: a count >= 1 or comma-separated "
                          "seeds (0,1,2)") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds = {text!r}: list each seed once")
    return seeds


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """The product of the grid's values, each named `key=value key=value`."""
    keys = list(grid)
    return [Point(" ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)) or "base",
                  dict(zip(keys, combo, strict=True)))
            for combo in itertools.product(*grid.values())]


def run_name(point: Point, index: int, seed: int, config_id: str) -> str:
    """A readable results-folder name for a run, short enough for a run-name."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", point.name).strip("_") or "base"
    if len(slug) > NAME_MAX:
        slug = f"p{index}-{config_id[:8]}"
    return f"{slug}-s{seed}"


def plan(points: Sequence[Point], seeds: Sequence[int], fixed: Mapping[str, Any],
         output_dir: Path) -> list[Run]:
    """Every run of the sweep, each config validated: a bad key or value in any point is a
    ConfigError naming it (and the point) before anything runs."""
    for key in RESERVED:
        if key in fixed:
            raise ConfigError(f"--run-config: run-config '{key}' is set by the sweep"
                              + (" (use --seeds)" if key == "seed" else ""))
    runs = []
    for index, point in enumerate(points):
        for seed in seeds:
            overrides = {**fixed, **point.settings, "seed": seed}
            try:
                config = validate_run_config(overrides)
            except ConfigError as err:
                raise ConfigError(f"grid point {point.name!r}: {err}") from None
            identity = {k: v for k, v in config.items() if k not in RESERVED}
            config_id = hashlib.sha1(json.dumps([identity, seed], sort_keys=True).encode()
                                     ).hexdigest()[:12]
            name = run_name(point, index, seed, config_id)
            runs.append(Run(point, seed, config_id, name, {
                **overrides, "output-dir": str(output_dir / "runs"), "run-name": name}))
    return runs


def run_one(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """One run of a sweep, in whichever process or Ray worker runs it: its metrics, accuracy
    curve and results folder, or its error (a failed run never raises out of here)."""
    from asyncfl.tools.inline import simulate

    logging.getLogger("flwr").setLevel(logging.WARNING)
    start = time.perf_counter()
    try:
        result = simulate(**overrides)
    except Exception as err:  # recorded in runs.csv; the sweep goes on
        lines = traceback.format_exception_only(type(err), err)
        return {"status": "failed", "error": " ".join(s.strip() for s in lines)}
    s = result.summary
    curve = []
    with (result.output_dir / "evals.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("accuracy"):
                curve.append((float(row["virtual_time"]), float(row["accuracy"])))
    return {
        "status": "ok", "final_accuracy": s.get("accuracy"),
        "time_to_target": s.get("time_to_target_accuracy"), "virtual_time": s["virtual_time"],
        "updates": s["updates"], "messages": s["comm_messages_down"] + s["comm_messages_up"],
        "bytes": s["comm_bytes_down"] + s["comm_bytes_up"],
        "wall_time": time.perf_counter() - start, "results_dir": str(result.output_dir),
        "curve": curve,
    }


Outcome = tuple[Run, dict[str, Any]]


def run_inline(todo: Sequence[Run]) -> Iterator[Outcome]:
    """The runs one after another in this process (one worker: no start-up cost)."""
    for run in todo:
        yield run, run_one(run.overrides)


def run_processes(todo: Sequence[Run], workers: int) -> Iterator[Outcome]:
    """The runs in `workers` spawned processes, yielded as they finish."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, dict(run.overrides)): run for run in todo}
        try:
            for future in as_completed(futures):
                error = future.exception()
                yield futures[future], (future.result() if error is None else {
                    "status": "failed", "error": f"worker process: {error!r}"})
        finally:  # stop what has not started when the caller stops (Ctrl-C)
            pool.shutdown(wait=False, cancel_futures=True)


def run_ray(todo: Sequence[Run], address: str) -> Iterator[Outcome]:
    """The runs as Ray tasks (one CPU each) on the cluster at `address`, yielded as they
    finish. The workers import asyncfl from where this process does (or their own install)."""
    import ray

    package_root = str(Path(__file__).resolve().parents[3])
    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": package_root}})
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_one)
        pending = {task.remote(dict(run.overrides)): run for run in todo}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            try:
                yield run, ray.get(ref)
            except ray.exceptions.RayError as err:
                yield run, {"status": "failed", "error": f"ray: {type(err).__name__}: {err}"}
    finally:
        ray.shutdown()


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by the sweep ([] if missing); a row cut short by an
    interruption is left out."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return [row for row in reader if None not in row.values() and None not in row]


class CsvLog:
    """A CSV that gets one row at a time, flushed, so an interrupted sweep keeps its rows."""

    def __init__(self, path: Path, columns: Sequence[str], keep: Iterable[Mapping[str, Any]]):
        self.columns = list(columns)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
        tmp.replace(path)
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.writer.writerows({k: "" if v is None else v for k, v in row.items()}
                              for row in rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def t_interval(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, sample std, half-width of the Student-t 95% interval of the mean) of the finite
    values; NaN where there are too few (std and interval need two)."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan, math.nan
    std = float(x.std(ddof=1))
    return float(x.mean()), std, float(stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))


def number(text: str | None) -> float:
    """A runs.csv cell as a float (empty: NaN)."""
    return float(text) if text not in (None, "") else math.nan


def summarize(points: Sequence[Point], rows: Sequence[Mapping[str, str]],
              grid_keys: Sequence[str]) -> list[dict[str, Any]]:
    """summary.csv's rows: per point, the mean, std and 95% interval of each metric over its
    finished runs."""
    table = []
    for point in points:
        mine = [r for r in rows if r["point"] == point.name]
        ok = [r for r in mine if r["status"] == "ok"]
        out: dict[str, Any] = {"point": point.name,
                               **{k: point.settings.get(k, "") for k in grid_keys},
                               "runs": len(ok), "failed": len(mine) - len(ok),
                               "target_reached": sum(r["time_to_target"] != "" for r in ok)}
        for metric in METRICS:
            mean, std, ci = t_interval(number(r[metric]) for r in ok)
            out |= {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": ci}
        table.append(out)
    return table


def plot_band(ax: Any, runs: Sequence[Sequence[tuple[float, float]]], label: str) -> None:
    """The mean of several seeds' (time, accuracy) curves, each held between its evaluations,
    up to the end of the shortest, with a band of +- one standard deviation."""
    end = min(c[-1][0] for c in runs)
    grid = np.unique([t for c in runs for t, _ in c if t <= end])
    held = np.array([[c[max(0, np.searchsorted([t for t, _ in c], g, "right") - 1)][1]
                      for g in grid] for c in runs])
    mean = held.mean(axis=0)
    line, = ax.plot(grid, mean, label=label)
    if len(runs) > 1:
        std = held.std(axis=0, ddof=1)
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def plot_sweep(points: Sequence[Point], rows: Sequence[Mapping[str, str]],
               curves: Mapping[str, list[tuple[float, float]]],
               summary: Sequence[Mapping[str, Any]], dest: Path, target: float) -> None:
    """accuracy_vs_time.png: per point the mean accuracy across seeds (each seed's curve held
    between evaluations, up to the end of the shortest), band +- one std; time_to_target.png:
    mean time to target with 95% whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for point in points:
        runs = [curves[r["config_id"]] for r in rows
                if r["point"] == point.name and r["status"] == "ok" and curves.get(r["config_id"])]
        if not runs:
            continue
        plot_band(ax, runs, f"{point.name} (n={len(runs)})")
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="virtual time (s)", ylabel="test accuracy",
           title="mean across seeds, band: +- 1 std")
    ax.grid(alpha=0.3)
    if ax.lines[1:]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest / "accuracy_vs_time.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(summary) + 1.5))
    labels = [f"{s['point']} ({s['target_reached']}/{s['runs']})" for s in summary]
    means = [0.0 if math.isnan(s["time_to_target_mean"]) else s["time_to_target_mean"]
             for s in summary]
    whiskers = [0.0 if math.isnan(s["time_to_target_ci95"]) else s["time_to_target_ci95"]
                for s in summary]
    ax.barh(labels, means, xerr=whiskers, capsize=4)
    ax.invert_yaxis()
    ax.set(xlabel=f"virtual time to accuracy {target:g} (s); whiskers: 95% interval",
           title="time to target (runs that reached it / runs)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(dest / "time_to_target.png", dpi=100)
    plt.close(fig)


def run_sweep(points: Sequence[Point], seeds: Sequence[int], fixed: Mapping[str, Any],
              output_dir: str | Path, workers: int = 1, ray_address: str = "",
              progress: bool = True) -> SweepResult:
    """Run every (point, seed) not already finished in `output_dir`, then write summary.csv
    and the figures. `workers` > 1: that many spawned processes; `ray_address`: Ray tasks on
    that cluster instead. Raises ConfigError (naming the key) before any run if a setting is
    wrong."""
    out = Path(output_dir).resolve()
    runs = plan(points, seeds, fixed, out)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out, "output-dir")
    grid_keys = list(dict.fromkeys(k for p in points for k in p.settings))
    planned = {run.config_id for run in runs}
    # finished runs are kept (those of other sweeps in this folder too); failed ones rerun
    kept = [r for r in read_csv_rows(out / "runs.csv") if r["status"] == "ok"]
    done = {r["config_id"] for r in kept}
    old_keys = [k for r in kept[:1] for k in r if k not in RUN_COLUMNS and k not in grid_keys]
    columns = ["point", *grid_keys, *old_keys, *RUN_COLUMNS[1:]]
    curve_rows = [r for r in read_csv_rows(out / "curves.csv") if r["config_id"] in done]
    runs_log = CsvLog(out / "runs.csv", columns, kept)
    curves_log = CsvLog(out / "curves.csv", CURVE_COLUMNS, curve_rows)
    todo = [run for run in runs if run.config_id not in done]
    if ray_address:
        outcomes = run_ray(todo, ray_address)
    elif workers > 1 and len(todo) > 1:
        outcomes = run_processes(todo, min(workers, len(todo)))
    else:
        outcomes = run_inline(todo)
    failed = 0
    try:
        with tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc="sweep",
                  disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar:
            for run, outcome in outcomes:
                curve = outcome.pop("curve", [])
                curves_log.add({"config_id": run.config_id, "virtual_time": t, "accuracy": a}
                               for t, a in curve)
                runs_log.add([{**outcome, "point": run.point.name, **run.point.settings,
                               "seed": run.seed, "config_id": run.config_id}])
                failed += outcome["status"] != "ok"
                bar.set_postfix(failed=failed)
                bar.update()
    finally:
        if hasattr(outcomes, "close"):
            outcomes.close()
        runs_log.close()
        curves_log.close()
    rows = [r for r in read_csv_rows(out / "runs.csv") if r["config_id"] in planned]
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in read_csv_rows(out / "curves.csv"):
        curves.setdefault(r["config_id"], []).append((float(r["virtual_time"]),
                                                      float(r["accuracy"])))
    summary = summarize(points, rows, grid_keys)
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]))
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v
                          for k, v in s.items()} for s in summary)
    target = float(validate_run_config(dict(fixed))["target-accuracy"])
    plot_sweep(points, rows, curves, summary, out, target)
    return SweepResult(out, rows, summary, curves)


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


def interval_cell(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± ci95` of per-seed values for a Markdown cell (the mean alone when the seeds
    agree or there is one); `(k/n)` when only k of the n seeds have a value (a target not
    reached), `n/a` when none has."""
    def show(x: float, places: int) -> str:
        return f"{x:,.0f}" if abs(x) >= 10**places else f"{x:.{places}g}"

    mean, _, ci = t_interval(values)
    reached = sum(math.isfinite(v) for v in values)
    if not reached:
        return "n/a"
    agree = not ci > 1e-9 * abs(mean)  # equal up to float rounding
    text = show(mean, digits) if agree else f"{show(mean, digits)} ± {show(ci, 2)}"
    return text if reached == len(values) else f"{text} ({reached}/{len(values)})"


def write_interval_table(stem: Path, rows: Sequence[Mapping[str, Any]],
                         columns: Sequence[str]) -> str:
    """An experiment's table whose cells may be lists of per-seed numbers: in `stem`.csv such
    a cell becomes the mean, with the interval's half-width in `<column>_ci95`; in `stem`.md
    it reads `mean ± ci95`. Returns the Markdown."""
    from asyncfl.results import markdown_table, write_rows

    csv_rows, md_rows, csv_columns = [], [], []
    for column in columns:
        csv_columns.append(column)
        if any(isinstance(row.get(column), list) for row in rows):
            csv_columns.append(f"{column}_ci95")
    for row in rows:
        flat, shown = dict(row), dict(row)
        for column, value in row.items():
            if isinstance(value, list):
                mean, _, ci = t_interval(value)
                flat[column], flat[f"{column}_ci95"] = mean, ci
                shown[column] = interval_cell(value)
        csv_rows.append({k: None if isinstance(v, float) and math.isnan(v) else v
                         for k, v in flat.items()})
        md_rows.append(shown)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_rows(stem.with_suffix(".csv"), csv_rows, csv_columns)
    text = markdown_table(md_rows, columns)
    stem.with_suffix(".md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    from asyncfl.tools.flower_launcher import parse_run_config

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
