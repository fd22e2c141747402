"""Running a sweep: every (point, seed) not yet finished as one `simulate` run, one after
another, in spawned processes or as Ray tasks; runs.csv and curves.csv get each row as its
run finishes (an interrupted sweep resumes), then summary.csv and the figures."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from asyncfl.config import ConfigError, validate_run_config
from asyncfl.results import atomic_file, check_writable, finished_summary
from asyncfl.tools.sweep.figures import plot_sweep
from asyncfl.tools.sweep.grid import Point, Run, plan
from asyncfl.tools.sweep.statistics import METRICS, summarize

RUN_COLUMNS = ("point", "seed", "status", *METRICS, "results_dir", "config_id", "error")
CURVE_COLUMNS = ("config_id", "virtual_time", "accuracy")


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
        "top_client_share": s["participation"]["top_share"],
        "gini_updates": s["participation"]["gini"], "curve": curve,
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


def read_curves(out: Path) -> dict[str, list[tuple[float, float]]]:
    """A sweep folder's curves.csv: (virtual time, accuracy) in the order written, by
    config_id."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in read_csv_rows(out / "curves.csv"):
        curves.setdefault(r["config_id"], []).append((float(r["virtual_time"]),
                                                      float(r["accuracy"])))
    return curves


class CsvLog:
    """A CSV that gets one row at a time, flushed, so an interrupted sweep keeps its rows."""

    def __init__(self, path: Path, columns: Sequence[str], keep: Iterable[Mapping[str, Any]]):
        self.columns = list(columns)
        with atomic_file(path, newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.writer.writerows({k: "" if v is None else v for k, v in row.items()}
                              for row in rows)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


#: the file a running sweep holds locked in its output folder
LOCK_NAME = ".sweep.lock"


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock while a sweep writes there: a second sweep on the same folder is
    refused with a ConfigError (it would rewrite runs.csv under the first one's appends).
    The lock is the kernel's (flock), so a killed sweep leaves none behind."""
    with (out / LOCK_NAME).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"--output-dir {out}: another asyncfl-sweep ({holder}) is "
                              "writing there; wait for it to finish or choose another "
                              "--output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clear_unfinished(todo: Sequence[Run]) -> None:
    """Remove the results folders the runs still to do left half-written (an interrupted
    sweep; no finished summary.json): the rerun writes its folder under the same name, not
    `<name>-2`. A finished run's folder (another sweep's, by the same name) stays."""
    for run in todo:
        folder = Path(run.overrides["output-dir"]) / run.run_name
        if folder.is_dir() and finished_summary(folder) is None:
            shutil.rmtree(folder)


def run_sweep(points: Sequence[Point], seeds: Sequence[int], fixed: Mapping[str, Any],
              output_dir: str | Path, workers: int = 1, ray_address: str = "",
              progress: bool = True) -> SweepResult:
    """Run every (point, seed) not already finished in `output_dir`, then write summary.csv
    and the figures. `workers` > 1: that many spawned processes; `ray_address`: Ray tasks on
    that cluster instead. Raises ConfigError (naming the key) before any run if a setting is
    wrong, or if another sweep is writing in `output_dir`."""
    out = Path(output_dir).resolve()
    runs = plan(points, seeds, fixed, out)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out, "output-dir")
    with sweep_lock(out):
        return _run_locked(points, runs, fixed, out, workers, ray_address, progress)


def _run_locked(points: Sequence[Point], runs: Sequence[Run], fixed: Mapping[str, Any],
                out: Path, workers: int, ray_address: str, progress: bool) -> SweepResult:
    """`run_sweep` once the folder's lock is held."""
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
    clear_unfinished(todo)
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
    curves = read_curves(out)
    summary = summarize(points, rows, grid_keys)
    with atomic_file(out / "summary.csv", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]))
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v
                          for k, v in s.items()} for s in summary)
    target = float(validate_run_config(dict(fixed))["target-accuracy"])
    given = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "defaults"
    swept = ", ".join(grid_keys) or "the points' settings"
    plot_sweep(points, rows, curves, summary, out, target,
               f"{given}; {len({run.seed for run in runs})} seeds; swept: {swept}")
    return SweepResult(out, rows, summary, curves)
