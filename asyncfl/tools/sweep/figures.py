"""A sweep's figures: accuracy against virtual time (mean across seeds, band +- one std,
within [0, 1]) and time to target (mean, whiskers: the 95% interval, not below 0 s)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from textwrap import fill
from typing import Any

import numpy as np

from asyncfl.plots import spans_decades, time_axis
from asyncfl.tools.sweep.grid import Point


def band(runs: Sequence[Sequence[tuple[float, float]]]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(times, mean, low, high) of several seeds' (time, accuracy) curves, each held between
    its evaluations, up to the end of the shortest; low / high: +- one standard deviation
    (none for one seed), clipped to [0, 1], where an accuracy lies."""
    end = min(c[-1][0] for c in runs)
    grid = np.unique([t for c in runs for t, _ in c if t <= end])
    held = np.array([[c[max(0, np.searchsorted([t for t, _ in c], g, "right") - 1)][1]
                      for g in grid] for c in runs])
    mean = held.mean(axis=0)
    std = held.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    return grid, mean, np.clip(mean - std, 0.0, 1.0), np.clip(mean + std, 0.0, 1.0)


def plot_band(ax: Any, runs: Sequence[Sequence[tuple[float, float]]], label: str) -> None:
    """`band`'s mean as a line, its +- one std as a shaded band (several seeds)."""
    grid, mean, low, high = band(runs)
    line, = ax.plot(grid, mean, label=label)
    if len(runs) > 1:
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)


def whiskers(means: Sequence[float], ci95: Sequence[float]) -> np.ndarray:
    """Asymmetric whiskers (2 x n: below, above) of means +- their 95% half-widths, the lower
    one cut at 0 s: a time to target is never negative."""
    means, ci95 = np.asarray(means, dtype=float), np.asarray(ci95, dtype=float)
    return np.vstack([np.minimum(ci95, means), ci95])


def plot_sweep(points: Sequence[Point], rows: Sequence[Mapping[str, str]],
               curves: Mapping[str, list[tuple[float, float]]],
               summary: Sequence[Mapping[str, Any]], dest: Path, target: float,
               title: str) -> None:
    """accuracy_vs_time.png: per point the mean accuracy across seeds (each seed's curve held
    between evaluations, up to the end of the shortest), band +- one std, a log time axis
    when the curves span decades; time_to_target.png: mean time to target with 95% whiskers
    (log axis likewise). `title`: what the sweep holds fixed and what it varies."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    times: list[float] = []
    for point in points:
        runs = [curves[r["config_id"]] for r in rows
                if r["point"] == point.name and r["status"] == "ok" and curves.get(r["config_id"])]
        if not runs:
            continue
        plot_band(ax, runs, f"{point.name} (n={len(runs)})")
        times += [t for curve in runs for t, _ in curve]
    ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"target {target:g}")
    time_axis(ax, times)
    ax.set(ylabel="test accuracy",
           title=f"{fill(title, 80)}\nmean across seeds, band: +- 1 std (within [0, 1])")
    ax.title.set_fontsize(9)
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
    ci95 = [0.0 if math.isnan(s["time_to_target_ci95"]) else s["time_to_target_ci95"]
            for s in summary]
    ax.barh(labels, means, xerr=whiskers(means, ci95), capsize=4)
    for row, s in enumerate(summary):
        if not s["target_reached"]:
            ax.text(0, row, " not reached", va="center", fontsize=8, color="tab:red")
    ax.invert_yaxis()
    if spans_decades(means):
        ax.set_xscale("symlog", linthresh=min(m for m in means if m > 0))
    ax.set(xlabel=f"virtual time to accuracy {target:g} (s); whiskers: 95% interval, cut at 0"
           + (", log scale" if spans_decades(means) else ""),
           title="time to target (runs that reached it / runs)")
    fig.suptitle(fill(title, 90), fontsize=9)  # over the figure: the labels take its left
    ax.set_xlim(left=0)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(dest / "time_to_target.png", dpi=100)
    plt.close(fig)
