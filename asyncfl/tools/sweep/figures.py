"""A sweep's figures: accuracy against virtual time (mean across seeds, band +- one std)
and time to target (mean, whiskers: the 95% interval)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asyncfl.tools.sweep.grid import Point


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
