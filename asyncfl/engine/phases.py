"""Where the ServerApp's time goes: cheap per-phase wall-clock accumulators."""

from __future__ import annotations

import time
from collections import defaultdict


class PhaseTimer:
    """Seconds per named phase. `enter(name)` charges the time since the previous call to the
    phase entered then, so the phases cover a run without gaps; `enter(None)` stops."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._phase: str | None = None
        self._since = time.perf_counter()

    def enter(self, name: str | None) -> None:
        now = time.perf_counter()
        if self._phase is not None:
            self.seconds[self._phase] += now - self._since
        self._phase, self._since = name, now

    def as_dict(self) -> dict[str, float]:
        return dict(sorted(self.seconds.items()))
