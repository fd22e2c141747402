"""Figures from a results folder (it imports nothing of asyncfl's: `results` draws `plot_run`
when it writes a folder, so the imports go one way)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
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


def plot_comparison(runs: Sequence[tuple[str, Sequence[Mapping[str, float]], float | None]],
                    reference: float, dest: Path) -> Path:
    """comparison.png: test accuracy of several runs, each (strategy, its evals, the virtual
    time it first reaches `reference` accuracy or None), against virtual time, each marked
    where it reaches `reference`."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, evals, reached in runs:
        times = [r["virtual_time"] for r in evals]
        line, = ax.plot(times, [r["accuracy"] for r in evals], marker="o", ms=3,
                        label=strategy if reached is None else f"{strategy}: {reached:.3g} s")
        if reached is not None:
            ax.axvline(reached, color=line.get_color(), ls=":", lw=1)
    ax.axhline(reference, color="grey", lw=0.8, ls="--")
    positive = [r["virtual_time"] for _, e, _ in runs for r in e if r["virtual_time"] > 0]
    ax.set_xscale("symlog", linthresh=min(positive, default=1.0))
    ax.set_xlim(left=0)
    ax.set(xlabel="virtual time (s, log scale)", ylabel="test accuracy",
           title=f"time to accuracy {reference:g} on the same clients")
    ax.legend(title="reaches it at")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(dest) / "comparison.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_async_mean(out: Path, title: str = "") -> Path:
    """Seed 000's four panels for a `mean` run: compute-time histogram, estimate vs true mean
    against model age (version), absolute error (log scale), staleness histogram."""
    out = Path(out)
    clients, evals, events = (read_csv(out / f"{name}.csv")
                              for name in ("clients", "evals", "events"))
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.5))
    ax[0].hist([c["step_time"] for c in clients], bins=30)
    ax[0].set(title="Compute time per step", xlabel="seconds", ylabel="clients")
    versions = [r["version"] for r in evals]
    ax[1].plot(versions, [r["estimate"] for r in evals], label="estimate")
    ax[1].plot(versions, [r["true-mean"] for r in evals], label="true mean", ls="--")
    ax[1].set(title="Estimate", xlabel="model age (version)")
    ax[1].legend()
    ax[2].plot(versions[1:], [max(r["abs-error"], 1e-12) for r in evals[1:]])
    ax[2].set(title="Absolute error", xlabel="model age (version)", yscale="log")
    ax[3].hist([e["staleness"] for e in events], bins=40)
    ax[3].set(title="Staleness (versions)", xlabel="staleness", ylabel="updates")
    fig.suptitle(title or out.name)
    fig.tight_layout()
    path = out / "mean_panels.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
