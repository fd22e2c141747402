"""The results folder of a run: events.csv, evals.csv, config.json, summary.json, model, PNG."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

EVAL_BASE_COLUMNS = ("version", "virtual_time", "wall_time")
CLIENT_COLUMNS = ("client", "node_id", "step_time", "num_examples", "updates")


def default_run_name(config: Mapping[str, Any]) -> str:
    """strategy-task-timestamp, unique within the output folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{config['strategy']}-{config['task']}-{stamp}"
    name, n = base, 1
    while (Path(config["output-dir"]) / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_dir(config: Mapping[str, Any]) -> Path:
    """The run's results folder (run-name must be set)."""
    return Path(config["output-dir"]) / str(config["run-name"])


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A CSV with fixed columns; floats written with repr so they read back exactly."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def time_to_target(evals: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Virtual (or wall, with a wall clock) time at which accuracy first reached target."""
    for row in evals:
        if row.get("accuracy", -math.inf) >= target:
            return float(row["virtual_time"])
    return None


def write_results(
    out: Path,
    config: Mapping[str, Any],
    *,
    events: Sequence[Mapping[str, Any]],
    event_columns: Sequence[str],
    evals: Sequence[Mapping[str, Any]],
    clients: Sequence[Mapping[str, Any]],
    final_arrays: Mapping[str, np.ndarray],
    summary: dict[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    finalize: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Write every file of the results folder and return the folder."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "events.csv", events, event_columns)
    metric_keys = sorted({k for row in evals for k in row} - set(EVAL_BASE_COLUMNS))
    write_rows(out / "evals.csv", evals, (*EVAL_BASE_COLUMNS, *metric_keys))
    (out / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    write_rows(out / "clients.csv", clients, CLIENT_COLUMNS)
    for name, rows in (tables or {}).items():
        write_rows(out / f"{name}.csv", rows, list(rows[0]) if rows else [])
    np.savez(out / "final_model.npz", **final_arrays)
    if evals:
        last = evals[-1]
        summary.update({k: last[k] for k in metric_keys if k in last})
        summary["final_version"] = last["version"]
    summary["time_to_target_accuracy"] = time_to_target(evals, float(config["target-accuracy"]))
    if finalize is not None:
        finalize(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    from asyncfl.plots import plot_run

    plot_run(out)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a Markdown table; floats with 4 significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(stem: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """`stem`.md and `stem`.csv with the same rows; returns the Markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_rows(stem.with_suffix(".csv"), rows, columns)
    text = markdown_table(rows, columns)
    stem.with_suffix(".md").write_text(text)
    return text
