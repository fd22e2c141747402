"""Figures from a results folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_csv(path: Path) -> list[dict[str, float]]:
    """A numeric CSV as rows of floats (empty cells become NaN)."""
    with Path(path).open() as f:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_run(out: Path) -> Path:
    """accuracy.png: the evaluated metric against virtual time and against version."""
    out = Path(out)
    rows = read_csv(out / "evals.csv")
    metric = "accuracy" if rows and "accuracy" in rows[0] else "loss"
    fig, (ax_time, ax_version) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    values = [r[metric] for r in rows]
    ax_time.plot([r["virtual_time"] for r in rows], values, marker="o", ms=3)
    clock = json.loads((out / "config.json").read_text()).get("clock", "virtual")
    ax_time.set_xlabel(f"{clock} time (s)")
    ax_version.plot([r["version"] for r in rows], values, marker="o", ms=3)
    ax_version.set_xlabel("global model version")
    ax_time.set_ylabel(f"test {metric}")
    for ax in (ax_time, ax_version):
        ax.grid(alpha=0.3)
    fig.suptitle(out.name)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
