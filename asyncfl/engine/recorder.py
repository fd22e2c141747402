"""What a run did, in one place: events.csv rows (applied and rejected replies), evaluations,
skip counts, further tables, progress lines, and the totals a results folder reports."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import MetricRecord
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp.strategy import Result

from asyncfl.engine import Completion, TrafficCounters
from asyncfl.engine.checkpoint import state_class
from asyncfl.protocol import NUM_EXAMPLES, TRAIN_LOSS

EVENT_COLUMNS = (
    "version_apply", "version_dispatch", "staleness", "client", "virtual_time", "wall_time",
    "dispatch_time", "duration", "steps", "num_examples", "train_loss", "bytes_down",
    "bytes_up", "comm_messages", "comm_bytes", "rejected",
)

#: seconds between progress lines on long runs
PROGRESS_SECONDS = 5.0


@state_class
@dataclass
class RunTotals:
    """A finished run's clocks and traffic: `traffic` is what crossed the Grid, `algorithm`
    the transfers the algorithm itself makes (APSB counts its broadcasts); the most model
    versions the server kept at once for clients in flight (async runs)."""

    virtual_time: float
    traffic: TrafficCounters
    algorithm: TrafficCounters
    ignored_replies: int
    dropped: list[int]
    versions_kept_peak: int = 0


@state_class
@dataclass
class RunRecorder:
    """Rows for events.csv and evals.csv, skip counts by reason, and per-run tables (written
    as <name>.csv, e.g. ESync's state table)."""

    clock_kind: str = "virtual"
    events: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    totals: RunTotals | None = None
    _last_progress: float = field(default_factory=time.monotonic)
    _began: float = field(default_factory=time.monotonic)

    def restore(self, saved: RunRecorder) -> None:
        """Take back a checkpointed recorder's rows and counts."""
        self.events, self.evals = saved.events, saved.evals
        self.failures, self.tables = saved.failures, saved.tables

    def applied(self) -> list[dict]:
        """The events of updates that were applied (not the rejected replies)."""
        return [row for row in self.events if not row.get("rejected")]

    def _row(self, completion: Completion, version_apply: int) -> dict:
        row = dict.fromkeys(EVENT_COLUMNS)
        row.update(version_apply=version_apply, version_dispatch=completion.tag,
                   client=completion.client, virtual_time=completion.virtual_time,
                   wall_time=completion.wall_time,
                   dispatch_time=completion.sent_at(self.clock_kind == "virtual"))
        return row

    def rejected(self, completion: Completion, version: int, reason: str) -> None:
        """Count, log and keep a row for a reply that was not applied."""
        self.failures[reason.split(":")[0]] += 1
        log(WARNING, "skipped reply of client %d at version %d: %s", completion.client,
            version, reason)
        row = self._row(completion, version)
        row["rejected"] = reason
        self.events.append(row)

    def applied_update(self, completion: Completion, metrics: MetricRecord,
                       version_at_arrival: int, version_after: int,
                       algorithm: TrafficCounters) -> None:
        """One events.csv row. Staleness = server version when the update arrived minus the
        version the client started from. `dispatch_time` and `duration` are on the run's
        clock: computed by the delay model in virtual time, measured with a wall clock."""
        row = self._row(completion, version_after)
        finished = completion.ended_at(self.clock_kind == "virtual")
        row.update(
            rejected="",
            staleness=version_at_arrival - int(completion.tag),
            duration=finished - row["dispatch_time"],
            steps=completion.steps,
            num_examples=metrics.get(NUM_EXAMPLES),
            train_loss=metrics.get(TRAIN_LOSS, math.nan),
            bytes_down=completion.dispatch.bytes_down,
            bytes_up=completion.bytes_up,
            comm_messages=algorithm.messages,
            comm_bytes=algorithm.bytes_down + algorithm.bytes_up,
        )
        self.events.append(row)

    def evaluated(self, version: int, virtual: float, wall: float, metrics: MetricRecord) -> None:
        """Keep an evaluation's row and log it."""
        row = {"version": version, "virtual_time": virtual, "wall_time": wall}
        row.update(metrics)
        self.evals.append(row)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                         if isinstance(v, float) and "class" not in k)
        log(INFO, "version %d | %s | %s", version, self._clocks(virtual, wall), shown)

    def _clocks(self, virtual: float, wall: float | None = None) -> str:
        """The run's times for a log line: a wall-clock run shows wall time only."""
        if self.clock_kind != "virtual":
            return f"wall {wall if wall is not None else time.monotonic() - self._began:.2f} s"
        return f"virtual {virtual:.2f} s" + (f" | wall {wall:.2f} s" if wall is not None else "")

    def progress(self, version: int, total: int, virtual_now: float) -> None:
        """A progress line every few seconds on long runs."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress = now
        newest = self.evals[-1] if self.evals else {}
        shown = " ".join(f"{k}={newest[k]:.4f}" for k in ("accuracy", "loss") if k in newest)
        applied = len(self.applied())
        log(INFO, "progress: version %d/%d | %s | %d updates applied, %d skipped | newest "
            "eval: %s", version, total, self._clocks(virtual_now), applied,
            len(self.events) - applied, shown or "none yet")

    def log_summary(self, strategy: str, unit: str, seconds: float, result: Result) -> None:
        """The end of a run, as Flower's strategies log it: what was done, then the Result."""
        applied = len(self.applied())
        versions = max((row["version_apply"] for row in self.applied()), default=0)
        totals = self.totals
        virtual = (f", {totals.virtual_time:.2f} s of virtual time"
                   if totals is not None and self.clock_kind == "virtual" else "")
        log(INFO, "")
        log(INFO, "%s finished in %.2f s%s: %d %s, %d updates applied, %d replies skipped%s",
            strategy, seconds, virtual, versions, unit, applied, sum(self.failures.values()),
            f", clients dropped: {totals.dropped}" if totals is not None and totals.dropped
            else "")
        if not FLOWER_LOGGER.isEnabledFor(INFO):  # str(result) lists every version's metrics
            return
        log(INFO, "Final results:")
        for line in str(result).splitlines():
            log(INFO, "\t%s", line)
