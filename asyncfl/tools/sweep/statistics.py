"""A sweep's numbers across seeds: mean, sample std and Student-t 95% interval per metric
(summary.csv), and tables whose cells read `mean ± ci95`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from asyncfl.results import markdown_table, write_rows
from asyncfl.tools.sweep.grid import Point

#: per-run numbers in runs.csv that summary.csv aggregates
METRICS = ("final_accuracy", "time_to_target", "virtual_time", "updates", "messages", "bytes",
           "wall_time", "top_client_share", "gini_updates")


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
