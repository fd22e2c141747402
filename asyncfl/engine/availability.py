"""When each client is online, in virtual time: the fleets phones and hospitals make.

A client is sent a task only while it is online; a task whose client goes offline before it
finishes is lost (recorded as "unavailable", as Flower reports a node that left, but never a
fault of the client); a run in which nobody is online moves its clock to the next client that
comes back instead of waiting. Two sources, both replayable from the run's seed:

- `OnOffWindows`: every client alternates online and offline periods drawn from exponentials
  with means `mean_on` and `mean_off` seconds (a two-state Markov chain, as device-availability
  studies model phones on chargers); it starts online with the stationary probability
  mean_on / (mean_on + mean_off).
- `TraceWindows`: online windows read from a CSV (`client,start,end` in seconds), cycled over
  clients as delay traces are; a client is offline outside its windows.

`Arrivals` makes clients join during the run: the first `initial` are there from the start,
the others arrive one by one as a Poisson process (exponential gaps of mean 1 / `rate`
seconds), each offline before its arrival and then as the underlying availability says.
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path
from typing import Protocol

import numpy as np

_AVAILABILITY_STREAM = 7
_ARRIVAL_STREAM = 8


class Availability(Protocol):
    def online(self, client: int, t: float) -> bool:
        """Whether the client is online at time t."""

    def next_online(self, client: int, t: float) -> float:
        """The earliest time >= t at which the client is online (inf: never again)."""

    def next_offline(self, client: int, t: float) -> float:
        """The first time after t at which the client goes offline (inf: never)."""


class _Windows:
    """Online windows per client as sorted starts and ends, with the three questions."""

    def _windows(self, client: int, until: float) -> tuple[list[float], list[float]]:
        """The client's window starts and ends, known at least up to `until`."""
        raise NotImplementedError

    def online(self, client: int, t: float) -> bool:
        starts, ends = self._windows(client, t)
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t < ends[i]

    def next_online(self, client: int, t: float) -> float:
        if self.online(client, t):
            return t
        starts, _ = self._windows(client, t)  # (drawn windows reach past t)
        i = bisect.bisect_right(starts, t)
        return starts[i] if i < len(starts) else math.inf

    def next_offline(self, client: int, t: float) -> float:
        if not self.online(client, t):
            return t
        starts, ends = self._windows(client, t)
        return ends[bisect.bisect_right(starts, t) - 1]


class OnOffWindows(_Windows):
    """Exponential online and offline periods per client (see the module docstring), drawn
    lazily as far as they are asked for; draws depend only on (seed, client)."""

    def __init__(self, mean_on: float, mean_off: float, seed: int = 0) -> None:
        if not (mean_on > 0 and mean_off > 0 and math.isfinite(mean_on + mean_off)):
            raise ValueError(f"availability means must be finite and > 0, got on {mean_on}, "
                             f"off {mean_off}")
        self.mean_on, self.mean_off, self.seed = mean_on, mean_off, seed
        self._drawn: dict[int, tuple[list[float], list[float], float, np.random.Generator]] = {}

    def _windows(self, client: int, until: float) -> tuple[list[float], list[float]]:
        if client not in self._drawn:
            rng = np.random.default_rng([self.seed, _AVAILABILITY_STREAM, client])
            share = self.mean_on / (self.mean_on + self.mean_off)
            offline_first = rng.random() >= share
            start = float(rng.exponential(self.mean_off)) if offline_first else 0.0
            self._drawn[client] = ([], [], start, rng)
        starts, ends, start, rng = self._drawn[client]
        while not ends or ends[-1] <= until:
            end = start + float(rng.exponential(self.mean_on))
            starts.append(start)
            ends.append(end)
            start = end + float(rng.exponential(self.mean_off))
        self._drawn[client] = (starts, ends, start, rng)
        return starts, ends


class TraceWindows(_Windows):
    """Online windows from a CSV with columns client, start, end (seconds); traced client
    i % (number traced) gives client i its windows. Overlapping windows of a client merge."""

    def __init__(self, path: str | Path) -> None:
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as error:
            raise ValueError(f"availability-trace: cannot read {path}: {error.strerror}"
                             ) from None
        if not rows or not {"client", "start", "end"} <= set(rows[0]):
            raise ValueError(f"availability-trace {path}: needs columns client, start, end")
        spans: dict[int, list[tuple[float, float]]] = {}
        for line, row in enumerate(rows, start=2):
            try:
                client, start, end = int(row["client"]), float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise ValueError(f"availability-trace {path}, line {line}: not a number in "
                                 f"{row}") from None
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                raise ValueError(f"availability-trace {path}, line {line}: needs finite "
                                 f"0 <= start < end, got {start}, {end}")
            spans.setdefault(client, []).append((start, end))
        self._traced = [self._merged(spans[c]) for c in sorted(spans)]

    @staticmethod
    def _merged(spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
        starts: list[float] = []
        ends: list[float] = []
        for start, end in sorted(spans):
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        return starts, ends

    def _windows(self, client: int, until: float) -> tuple[list[float], list[float]]:
        return self._traced[client % len(self._traced)]


class Arrivals:
    """Clients joining as a Poisson process on top of another availability (see the module
    docstring); arrival times depend only on the seed."""

    def __init__(self, rate: float, initial: int, seed: int = 0,
                 then: Availability | None = None) -> None:
        if not (rate > 0 and math.isfinite(rate)) or initial < 0:
            raise ValueError(f"arrivals need a finite rate > 0 and initial >= 0, got rate "
                             f"{rate}, initial {initial}")
        self.rate, self.initial, self.then = rate, initial, then
        self._rng = np.random.default_rng([seed, _ARRIVAL_STREAM])
        self._times: list[float] = []

    def arrival(self, client: int) -> float:
        """When the client joins (0 for the first `initial`)."""
        if client < self.initial:
            return 0.0
        while len(self._times) <= client - self.initial:
            last = self._times[-1] if self._times else 0.0
            self._times.append(last + float(self._rng.exponential(1.0 / self.rate)))
        return self._times[client - self.initial]

    def online(self, client: int, t: float) -> bool:
        return t >= self.arrival(client) and (self.then is None or self.then.online(client, t))

    def next_online(self, client: int, t: float) -> float:
        t = max(t, self.arrival(client))
        return t if self.then is None else self.then.next_online(client, t)

    def next_offline(self, client: int, t: float) -> float:
        if not self.online(client, t):
            return t
        return math.inf if self.then is None else self.then.next_offline(client, t)


def online_windows(availability: Availability, num_clients: int, end: float
                   ) -> list[dict[str, float]]:
    """Every client's online windows that begin before `end`, cut at it: the rows of a
    run's availability.csv (client, start, end), for its timeline."""
    rows = []
    for client in range(num_clients):
        t = availability.next_online(client, 0.0)
        while t < end:
            leaves = availability.next_offline(client, t)
            rows.append({"client": client, "start": t, "end": min(leaves, end)})
            t = availability.next_online(client, leaves) if leaves < math.inf else math.inf
    return rows


def first_online(availability: Availability, clients: list[int], t: float) -> float:
    """The earliest time >= t at which any of `clients` is online (inf: none ever is)."""
    return min((availability.next_online(c, t) for c in clients), default=math.inf)
