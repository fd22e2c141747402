"""Figures from a results folder (it imports nothing of asyncfl's: `results` draws `plot_run`
when it writes a folder, so the imports go one way)."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_csv(path: Path, limit: int | None = None) -> list[dict[str, float]]:
    """A numeric CSV as rows of floats (empty cells become NaN); the first `limit` rows."""
    with Path(path).open() as f:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()}
                for row in itertools.islice(csv.DictReader(f), limit)]


def save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


#: a time axis becomes logarithmic when its positive times span this factor or more
DECADES = 100.0


def spans_decades(times: Iterable[float]) -> bool:
    """Whether positive times span DECADES or more: a linear axis would squeeze the short
    curves onto x = 0."""
    positive = [t for t in times if t > 0]
    return len(positive) > 1 and max(positive) / min(positive) >= DECADES


def time_axis(ax: Any, times: Sequence[float], clock: str = "virtual") -> None:
    """A time axis from 0 in seconds of `clock`; symmetric-log (linear up to the smallest
    positive time, so t = 0 stays on it) when the times span decades."""
    scale = ""
    if spans_decades(times):
        ax.set_xscale("symlog", linthresh=min(t for t in times if t > 0))
        scale = ", log scale"
    ax.set_xlim(left=0)
    ax.set_xlabel(f"{clock} time (s{scale})")


def speeds(config: Mapping[str, Any]) -> str:
    """The delay model in words."""
    if config.get("delay-profile"):
        return f"step times {config['delay-profile']} s"
    dist = config.get("delay-dist", "lognormal")
    if dist == "trace":
        return "traced step times"
    if dist == "uniform":
        return f"uniform step times {config['delay-low']:g}-{config['delay-high']:g} s"
    spread = f", std {config['delay-std']:g} s" if dist in ("normal", "lognormal") else ""
    return f"{dist} step times (mean {config['delay-mean']:g} s{spread})"


def setup(config: Mapping[str, Any]) -> str:
    """Task, clients, split and speeds: what the runs of one comparison share."""
    split = config.get("partition", "iid")
    if split == "dirichlet":
        split += f" {config['alpha']:g}"
    return f"{config['task']}, {config['num-clients']} clients ({split}), {speeds(config)}"


def run_title(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """Two lines: strategy and setup; local work, client lr, the strategy's settings that
    differ from their defaults (summary.json's changed_settings), rounds and time budget."""
    work = (f"{config['local-steps']} local steps" if config.get("local-steps")
            else f"{config['local-epochs']} local epochs")
    changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in summary.get("changed_settings", {}).items())
    budget = (f"time-budget {config['time-budget']:.4g} s" if config.get("time-budget")
              else "")
    second = ", ".join(p for p in (work, f"batch {config['batch-size']}",
                                   f"lr {config['lr']:g}", changed,
                                   f"num-server-rounds {config['num-server-rounds']}", budget,
                                   f"seed {config['seed']}") if p)
    title = f"{config['strategy']} on {setup(config)}\n{second}"
    report = summary.get("participation", {})
    if report.get("dominated"):
        counts = report["updates_per_client"]
        title += (f"\nWARNING: client {report['top_client']} made "
                  f"{counts[report['top_client']]} of the {sum(counts)} updates")
    return title


def read_summary(out: Path) -> dict[str, Any]:
    """A results folder's summary.json."""
    return json.loads((out / "summary.json").read_text())


def plot_run(out: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """accuracy.png: the evaluated metric against the run's clock and against version, with
    the target accuracy, titled with the strategy and its settings (`summary`: the run's,
    before summary.json is written; else read from it)."""
    out = Path(out)
    rows = read_csv(out / "evals.csv")
    config = json.loads((out / "config.json").read_text())
    summary = summary if summary is not None else read_summary(out)
    metric = "accuracy" if rows and "accuracy" in rows[0] else "loss"
    fig, (ax_time, ax_version) = plt.subplots(1, 2, figsize=(10, 4.3), sharey=True)
    values = [r[metric] for r in rows]
    times = [r["virtual_time"] for r in rows]
    ax_time.plot(times, values, marker="o", ms=3)
    time_axis(ax_time, times, config.get("clock", "virtual"))
    ax_version.plot([r["version"] for r in rows], values, marker="o", ms=3)
    ax_version.set_xlabel("global model version")
    ax_version.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_time.set_ylabel(f"test {metric}")
    for ax in (ax_time, ax_version):
        ax.grid(alpha=0.3)
        if metric == "accuracy":
            ax.axhline(config["target-accuracy"], color="grey", lw=0.8, ls="--",
                       label=f"target {config['target-accuracy']:g}")
    if metric == "accuracy":
        ax_time.legend(loc="lower right")
    fig.suptitle(run_title(config, summary), fontsize=10)
    return save(fig, out / "accuracy.png")


def timeline_segments(out: Path, clients: int | None = None) -> list[dict[str, Any]]:
    """What every client did when, from events.csv, clients.csv and config.json: per task a
    transfer of the model down (the client's latency + bytes down / its bandwidth down),
    training, a transfer up, or the whole task as `rejected`; between tasks and up to the
    run's end, `idle`, or `offline` where availability.csv says the client was not online.
    Each segment: client, start, end, kind, staleness (training of an applied update; else
    None). Times are on the run's clock (dispatch_time and duration of events.csv; a
    rejected reply ends at its arrival). `clients`: only the first that many clients (a run
    of a million clients reads 40 rows of clients.csv, not all)."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    shown = int(config["num-clients"]) if clients is None else min(clients,
                                                                    int(config["num-clients"]))
    links = client_links(out, config, shown)
    with (out / "events.csv").open() as f:
        events = list(csv.DictReader(f))
    finished = "virtual_time" if config.get("clock", "virtual") == "virtual" else "wall_time"
    segments: list[dict[str, Any]] = []
    for row in events:
        start = float(row["dispatch_time"])
        # a rejected row has no duration: it ends when its reply came in
        end = start + float(row["duration"]) if row["duration"] else float(row[finished])
        client = int(row["client"])
        if client >= shown:
            continue
        if row["rejected"]:
            segments.append(dict(client=client, start=start, end=end, kind="rejected",
                                 staleness=None))
            continue
        latency, bandwidth_down, bandwidth_up = links.get(client, links[None])
        down = latency + (float(row["bytes_down"]) / bandwidth_down if bandwidth_down else 0.0)
        up = latency + (float(row["bytes_up"]) / bandwidth_up if bandwidth_up else 0.0)
        parts = ((start, start + down, "transfer", None),
                 (start + down, end - up, "training", int(row["staleness"])),
                 (end - up, end, "transfer", None))
        segments += [dict(client=client, start=a, end=b, kind=k, staleness=tau)
                     for a, b, k, tau in parts if b > a]
    finish = max((s["end"] for s in segments), default=0.0)
    busy: dict[int, list[tuple[float, float]]] = {}
    for s in segments:
        busy.setdefault(s["client"], []).append((s["start"], s["end"]))
    online = read_online_windows(out)
    for client in range(shown):
        at = 0.0
        for a, b in sorted(busy.get(client, [])) + [(finish, finish)]:
            if a > at:
                segments += free_time(client, at, a, online.get(client) if online else None)
            at = max(at, b)
    return sorted(segments, key=lambda s: (s["client"], s["start"]))


def client_links(out: Path, config: Mapping[str, Any], clients: int | None = None
                 ) -> dict[int | None, tuple[float, float, float]]:
    """Per client (and None: the run's shared link) latency and bandwidth down and up, from
    clients.csv where it has them (`clients`: only clients below it; the file lists clients
    in order)."""
    shared = (config.get("comm-latency", 0.0), config.get("comm-bandwidth", 0.0),
              config.get("comm-bandwidth", 0.0))
    links: dict[int | None, tuple[float, float, float]] = {None: shared}
    if (out / "clients.csv").exists():
        for row in read_csv(out / "clients.csv", clients):
            if "latency" in row:
                links[int(row["client"])] = (row["latency"], row["bandwidth_down"],
                                             row["bandwidth_up"])
    return links


def read_online_windows(out: Path) -> dict[int, list[tuple[float, float]]] | None:
    """availability.csv's online windows per client; None if the run had no availability."""
    if not (out / "availability.csv").exists():
        return None
    windows: dict[int, list[tuple[float, float]]] = {}
    for row in read_csv(out / "availability.csv"):
        windows.setdefault(int(row["client"]), []).append((row["start"], row["end"]))
    return windows


def free_time(client: int, start: float, end: float,
              online: list[tuple[float, float]] | None) -> list[dict[str, Any]]:
    """[start, end) of a client without a task: `idle` where it was online (always, without
    availability), `offline` elsewhere."""
    if online is None:
        return [dict(client=client, start=start, end=end, kind="idle", staleness=None)]
    parts, at = [], start
    for a, b in sorted(online):
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue
        if a > at:
            parts.append(dict(client=client, start=at, end=a, kind="offline", staleness=None))
        parts.append(dict(client=client, start=a, end=b, kind="idle", staleness=None))
        at = b
    if at < end:
        parts.append(dict(client=client, start=at, end=end, kind="offline", staleness=None))
    return parts


#: at most this many clients (the first ones) get a row in the timeline
TIMELINE_CLIENTS = 40


def plot_timeline(out: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """timeline.png: clients x time, each task's training coloured by the staleness of its
    update, transfers grey, rejected tasks red, idle time blank: who waits, who works
    (`summary` as for `plot_run`)."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    summary = summary if summary is not None else read_summary(out)
    segments = timeline_segments(out, TIMELINE_CLIENTS)
    shown = min(int(config["num-clients"]), TIMELINE_CLIENTS)
    stalest = max((s["staleness"] for s in segments if s["kind"] == "training"), default=0)
    norm = Normalize(vmin=0, vmax=max(1, stalest))
    colours = {"transfer": "0.6", "rejected": "tab:red", "offline": "0.92"}
    fig, ax = plt.subplots(figsize=(10, 2.0 + 0.22 * shown))
    bars: dict[str, list[dict[str, Any]]] = {}
    for s in segments:  # one collection per kind (training coloured bar by bar): few artists
        if s["kind"] != "idle":
            bars.setdefault(s["kind"], []).append(s)
    for kind, spans in bars.items():
        colour = (plt.cm.viridis(norm(np.array([s["staleness"] for s in spans])))
                  if kind == "training" else colours[kind])
        ax.add_collection(PolyCollection(
            [[(s["start"], s["client"] - 0.4), (s["start"], s["client"] + 0.4),
              (s["end"], s["client"] + 0.4), (s["end"], s["client"] - 0.4)] for s in spans],
            facecolors=colour, edgecolor="white", linewidth=0.3,
            hatch="//" if kind == "rejected" else None), autolim=True)
    ax.autoscale_view()
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, pad=0.01,
                 ticks=MaxNLocator(integer=True), label="staleness of the update (versions)")
    ax.set_ylim(shown - 0.5, -0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("client" + (f" (first {shown} of {config['num-clients']})"
                              if shown < int(config["num-clients"]) else ""))
    ax.set_xlim(left=0)
    ax.set_xlabel(f"{config.get('clock', 'virtual')} time (s); grey: transfer, red: rejected, "
                  "blank: idle" + (", light grey: offline"
                                   if any(x["kind"] == "offline" for x in segments) else ""))
    ax.set_title(run_title(config, summary), fontsize=10)
    return save(fig, out / "timeline.png")


def plot_comparison(runs: Sequence[Mapping[str, Any]], target: float, title: str,
                    dest: Path) -> Path:
    """comparison.png: left, test accuracy against virtual time of several runs (each a
    mapping with label, evals, reached: when it first reached `target` or None, and
    participation: `results.participation`), marked where each reaches the target; right,
    each run's share of updates per client, with a line at a third."""
    fig, (ax, ax_share) = plt.subplots(1, 2, figsize=(12, 4.8),
                                       gridspec_kw={"width_ratios": [3, 2]})
    for run in runs:
        evals, reached = run["evals"], run["reached"]
        line, = ax.plot([r["virtual_time"] for r in evals], [r["accuracy"] for r in evals],
                        marker="o", ms=3, label=run["label"] + (
                            "" if reached is None else f": {reached:.3g} s"))
        if reached is not None:
            ax.axvline(reached, color=line.get_color(), ls=":", lw=1)
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    time_axis(ax, [r["virtual_time"] for run in runs for r in run["evals"]])
    ax.set(ylabel="test accuracy", title=f"time to target accuracy {target:g}")
    ax.legend(title="reaches the target at", fontsize=8)
    ax.grid(alpha=0.3)
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        report = run["participation"]
        counts = report["updates_per_client"]
        total = sum(counts) or 1
        label = run["label"] + ("" if report["top_share"] is None else
                                f": top {report['top_share']:.1%}, Gini {report['gini']:.2f}")
        ax_share.bar([c + (i - (len(runs) - 1) / 2) * width for c in range(len(counts))],
                     [n / total for n in counts], width=width, label=label)
    ax_share.axhline(1 / 3, color="tab:red", lw=0.8, ls="--", label="a third")
    ax_share.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_share.set(xlabel="client", ylabel="share of the run's updates",
                 title="participation: updates per client")
    ax_share.legend(fontsize=8)
    ax_share.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10, color="tab:red" if "WARNING" in title else "black")
    return save(fig, Path(dest) / "comparison.png")


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
    return save(fig, out / "mean_panels.png", dpi=90)
