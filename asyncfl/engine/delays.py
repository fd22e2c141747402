"""Seeded delay models: how long a client's task takes.

Each client i gets a per-step compute time c_i, drawn once from a distribution. A task of k
local steps then takes

    T = sum_{s=1..k} c_i * j_s  +  2 * latency  +  (bytes_down + bytes_up) / bandwidth

where j_s are per-step jitter factors (log-normal with mean 1 and relative std `jitter`; all 1
when jitter is 0). With per-client networks (`Network`, `delay-profile`'s sibling
`comm-profile`) the communication part is the client's own link, up and down apart:

    latency_i + bytes_down / down_i  +  latency_i + bytes_up / up_i
 With a trace (`delay-dist = trace`), c_i is instead read per task: the
client's t-th task uses the t-th per-step time recorded for it, cycled (see `read_trace`).
Draws depend only on (seed, client, task number), never on the order in which replies happen
to arrive, so every runtime sees the same durations.

Why lognormal is the default (`delay-dist`, with `delay-std` 0.5 at `delay-mean` 1 s: sigma =
sqrt(ln 1.25) = 0.47). A device's time per step is a product of independent factors (its
hardware generation, clock rate, load, thermal state, the other apps on it), so its logarithm
is a sum of them and close to normal: measured device speeds are right-skewed and lognormal-
like. Its left tail is thin: 90% of the clients lie within 0.41-1.95 s, the fastest of 10
is about 2.5x quicker than the mean, of 100,000 about 9x, and a client 1,000x quicker than the
mean has probability 1e-46. The exponential (the default before) puts one client in a thousand
there, and one in ten at a tenth of the mean: with 10 clients a single draw can make one client
send nearly every asynchronous update, so a comparison measures that client, not the strategy.
The exponential stays available by name for the experiments that model it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DISTRIBUTIONS = ("normal", "exponential", "uniform", "lognormal", "constant", "trace")

# Normal draws are clipped below at this fraction of the mean, so no client is infinitely fast.
NORMAL_FLOOR = 0.05

_SPEED_STREAM = 1
_JITTER_STREAM = 2


def draw_step_times(
    dist: str,
    n: int,
    seed: int,
    *,
    mean: float = 1.0,
    std: float = 0.0,
    low: float = 0.0,
    high: float = 1.0,
) -> np.ndarray:
    """Draw n per-step compute times (seconds) from `dist`, reproducibly from `seed`.

    `mean` and `std` are the moments of the drawn times themselves for every distribution
    (for lognormal they are converted to the underlying normal's mu and sigma).
    """
    rng = np.random.default_rng([seed, _SPEED_STREAM])
    if dist == "constant":
        return np.full(n, float(mean))
    if dist == "normal":
        return np.maximum(rng.normal(mean, std, n), NORMAL_FLOOR * mean)
    if dist == "exponential":
        return rng.exponential(mean, n)
    if dist == "uniform":
        return rng.uniform(low, high, n)
    if dist == "lognormal":
        sigma2 = np.log1p((std / mean) ** 2)
        return rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), n)
    if dist == "trace":
        raise ValueError("delay-dist = trace reads its times from a file: use read_trace")
    raise ValueError(f"unknown delay distribution {dist!r}; choose one of {DISTRIBUTIONS}")


#: named speed classes for `delay-profile`: seconds per local step, relative to a fast GPU
SPEED_CLASSES = {"gpu-fast": 1.0, "gpu-mid": 2.0, "gpu-slow": 4.0, "cpu": 16.0}


#: most per-client times a delay-profile may list (no run has more clients)
MAX_PROFILE_ENTRIES = 100_000
#: longest per-step time, seconds (about 30 years): sums of such times stay finite
MAX_STEP_TIME = 1e9


def parse_profile(text: str) -> list[float]:
    """'1,2,4,8' or 'gpu-fast*2,gpu-slow,cpu' (classes from SPEED_CLASSES, *n repeats). Every
    time is in (0, MAX_STEP_TIME] and there are at most MAX_PROFILE_ENTRIES, counted before
    any list is built."""
    entries: list[tuple[float, int]] = []
    for item in text.split(","):
        name, _, count = item.strip().partition("*")
        value = SPEED_CLASSES[name] if name in SPEED_CLASSES else float(name)
        repeat = int(count) if count else 1
        if not 0 < value <= MAX_STEP_TIME or repeat < 1:
            raise ValueError(f"bad delay-profile entry {item!r}: a per-step time in (0, "
                             f"{MAX_STEP_TIME:g}] seconds, *count >= 1")
        entries.append((value, repeat))
    total = sum(repeat for _, repeat in entries)
    if total > MAX_PROFILE_ENTRIES:
        raise ValueError(f"delay-profile lists {total:,} times; at most "
                         f"{MAX_PROFILE_ENTRIES:,} (one per client, and no run has more)")
    return [value for value, repeat in entries for _ in range(repeat)]


def profile_step_times(profile: Sequence[float], n: int) -> np.ndarray:
    """Per-step times given explicitly, assigned to clients in order and cycled."""
    return np.resize(np.asarray(profile, dtype=float), n)


def read_trace(path: str | Path) -> list[np.ndarray]:
    """Per-step times recorded per task, one array per traced client (in client-id order).

    The CSV has a `client` column and either `step_time` (seconds per local step) or
    `duration` and `steps` (a task's seconds and local steps), one row per task, in the order
    the tasks ran. An `events.csv` that asyncfl wrote with a wall clock is such a file, so a
    real run's measured speeds can be replayed in virtual time; its rejected rows are skipped.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"delay-trace: cannot read {path}: {error.strerror}") from None
    columns = set(rows[0]) if rows else set()
    if "client" not in columns or not ({"step_time"} <= columns
                                       or {"duration", "steps"} <= columns):
        raise ValueError(f"delay-trace {path}: needs a 'client' column and either 'step_time' "
                         f"or 'duration' and 'steps'; found {sorted(columns) or 'no rows'}")
    times: dict[int, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        if row.get("rejected") or row.get("steps") in ("0", "0.0"):
            continue
        try:
            value = (float(row["step_time"]) if "step_time" in columns
                     else float(row["duration"]) / float(row["steps"]))
            client = int(row["client"])
        except (TypeError, ValueError):
            raise ValueError(f"delay-trace {path}, line {line}: not a number in {row}") from None
        if not 0 < value <= MAX_STEP_TIME:
            raise ValueError(f"delay-trace {path}, line {line}: per-step time {value} is not "
                             f"a number in (0, {MAX_STEP_TIME:g}] seconds")
        times.setdefault(client, []).append(value)
    if not times:
        raise ValueError(f"delay-trace {path}: no usable rows")
    return [np.asarray(times[c]) for c in sorted(times)]


@dataclass(frozen=True)
class Network:
    """One client's link: one-way `latency` (seconds) and bandwidths `down` (server to client)
    and `up` (bytes per second; 0 = unlimited)."""

    latency: float = 0.0
    down: float = 0.0
    up: float = 0.0

    def transfer_time(self, bytes_down: int, bytes_up: int) -> float:
        """Seconds for one message down and one reply up: each a latency plus its bytes over
        the link's bandwidth in that direction."""
        down = bytes_down / self.down if self.down > 0 else 0.0
        up = bytes_up / self.up if self.up > 0 else 0.0
        return self.latency + down + self.latency + up


#: named links for `comm-profile` (latency s, down and up bytes/s): a data-centre LAN, home
#: wifi behind a 50/20 Mbit/s line, a 4G phone (20/10 Mbit/s), 3G (4/1 Mbit/s)
NETWORK_CLASSES = {
    "lan": Network(0.0005, 125e6, 125e6),
    "wifi": Network(0.01, 6.25e6, 2.5e6),
    "4g": Network(0.05, 2.5e6, 1.25e6),
    "3g": Network(0.15, 0.5e6, 0.125e6),
}


def parse_network_profile(text: str) -> list[Network]:
    """'wifi*3,4g' or 'latency:down:up' triples ('0.02:1e6:5e5'), cycled over clients like
    `delay-profile`; every number finite and >= 0 (a bandwidth of 0 is unlimited)."""
    links: list[Network] = []
    for item in text.split(","):
        name, _, count = item.strip().partition("*")
        if name in NETWORK_CLASSES:
            link = NETWORK_CLASSES[name]
        else:
            parts = name.split(":")
            numbers = [float(p) for p in parts] if len(parts) == 3 else []
            if not numbers or not all(np.isfinite(x) and x >= 0 for x in numbers):
                raise ValueError(f"bad comm-profile entry {item!r}: a class "
                                 f"({', '.join(NETWORK_CLASSES)}) or latency:down:up")
            link = Network(*numbers)
        repeat = int(count) if count else 1
        if repeat < 1:
            raise ValueError(f"bad comm-profile entry {item!r}: the count must be >= 1")
        links.extend([link] * repeat)
    return links


@dataclass
class DelayModel:
    """Per-client step times plus jitter and communication costs; see the module docstring."""

    step_times: np.ndarray  # per client; with a trace, the mean of the client's trace
    seed: int = 0
    jitter: float = 0.0
    latency: float = 0.0
    bandwidth: float = 0.0  # bytes per second; 0 means unlimited
    trace: tuple[np.ndarray, ...] = ()  # per client: per-step time of each task, cycled
    #: per client, its own link (cycled over clients); empty: `latency` and `bandwidth` for all
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_trace(cls, trace: Sequence[np.ndarray], n: int, **kwargs) -> DelayModel:
        """Clients take the traced clients' times in order, cycling when n is larger."""
        per_client = tuple(trace[i % len(trace)] for i in range(n))
        return cls(np.array([t.mean() for t in per_client]), trace=per_client, **kwargs)

    def base_step_time(self, client: int, task_number: int) -> float:
        """The client's per-step time in its `task_number`-th task, before jitter."""
        if self.trace:
            times = self.trace[client]
            return float(times[task_number % len(times)])
        return float(self.step_times[client])

    def step_times_of_task(self, client: int, task_number: int, steps: int) -> np.ndarray:
        """The duration of each of a task's steps (the client's step time, jittered); a longer
        draw extends a shorter one, so steps can be drawn as they are needed."""
        base = self.base_step_time(client, task_number)
        if self.jitter == 0.0:
            return np.full(steps, base)
        return base * self.jitter_factors(client, task_number, steps)

    def compute_time(self, client: int, steps: int, task_number: int) -> float:
        """Seconds of compute for `steps` local steps of this client's `task_number`-th task."""
        base = self.base_step_time(client, task_number)
        if self.jitter == 0.0 or steps == 0:
            return base * steps
        return base * float(self.jitter_factors(client, task_number, steps).sum())

    def jitter_factors(self, client: int, task_number: int, steps: int) -> np.ndarray:
        """Log-normal factors with mean 1 and relative std `jitter`, one per step."""
        rng = np.random.default_rng([self.seed, _JITTER_STREAM, client, task_number])
        sigma2 = np.log1p(self.jitter**2)
        return rng.lognormal(-sigma2 / 2, np.sqrt(sigma2), steps)

    def link(self, client: int) -> Network:
        """The client's link: its own (`networks`, cycled) or the shared latency and
        bandwidth."""
        if self.networks:
            return self.networks[client % len(self.networks)]
        return Network(self.latency, self.bandwidth, self.bandwidth)

    def comm_time(self, client: int, bytes_down: int, bytes_up: int) -> float:
        """Seconds spent sending a model down to `client` and its reply up, on its link."""
        return self.link(client).transfer_time(bytes_down, bytes_up)

    def task_time(self, client: int, steps: int, task_number: int, bytes_down: int,
                  bytes_up: int) -> float:
        """Total duration of one task: compute plus communication."""
        return (self.compute_time(client, steps, task_number)
                + self.comm_time(client, bytes_down, bytes_up))


def zero_delays(n: int) -> DelayModel:
    """A model in which every task is instantaneous (e.g. plug-in use without a delay model)."""
    return DelayModel(step_times=np.zeros(n))
