"""Where the ServerApp's time goes: cheap per-phase wall-clock accumulators."""

from __future__ import annotations

import time
from collections import defaultdict


class PhaseTimer:
    """Seconds per named phase. `lap(name, since)` charges the time since `since` to `name`
    and returns now, so consecutive laps cover a stretch of code without gaps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[name] += now - since
        return now

    def as_dict(self) -> dict[str, float]:
        return dict(sorted(self.seconds.items()))
