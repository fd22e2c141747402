"""The two clocks: virtual (durations computed, nothing sleeps) and wall (real seconds)."""

from __future__ import annotations

import time


class VirtualClock:
    """Simulated time in seconds; the event loop moves it to each applied reply's finish."""

    kind = "virtual"

    def __init__(self) -> None:
        self.now = 0.0

    def advance_to(self, t: float) -> None:
        """Move forward to t (never backwards: replies are applied in finish order)."""
        self.now = max(self.now, t)


class WallClock:
    """Seconds since the clock was created, read from the monotonic wall clock."""

    kind = "wall"

    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def now(self) -> float:
        return time.monotonic() - self._start

    def advance_to(self, t: float) -> None:
        """Wall time moves by itself; nothing to do."""


Clock = VirtualClock | WallClock
