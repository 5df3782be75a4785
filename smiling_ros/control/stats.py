"""Latency and deadline statistics of the control loop (O(1) per tick, fixed memory)."""
from __future__ import annotations

import math
from typing import Optional


# --------------------------------------------------------------------------- statistics
class LatencyStats:
    """Distribution of durations [ns] since the last reset, as a histogram with log-spaced bins
    (each 2 % wide, 1 us .. 100 s), so ``add`` is O(1), memory is fixed however long the node runs
    and percentiles cost O(bins). A percentile is reported as the upper edge of its bin (at most
    2 % high), capped at the largest value seen.
    """

    MIN_NS = 1_000
    RATIO = 1.02
    _LOG = math.log(RATIO)
    NBINS = int(math.ceil(math.log(1e11 / MIN_NS) / math.log(RATIO))) + 2

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._counts = [0] * self.NBINS
        self.count = 0
        self.max_ns = 0
        self.total_ns = 0

    def add(self, ns: int) -> None:
        i = 0 if ns < self.MIN_NS else min(int(math.log(ns / self.MIN_NS) / self._LOG) + 1, self.NBINS - 1)
        self._counts[i] += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def percentile_ms(self, q: float) -> float:
        if not self.count:
            return float("nan")
        rank = q / 100.0 * self.count
        acc = 0
        for i, c in enumerate(self._counts):
            acc += c
            if acc >= rank and c:
                upper = self.MIN_NS * self.RATIO ** i
                return min(upper, self.max_ns) / 1e6
        return self.max_ns / 1e6

    def mean_ms(self) -> float:
        return self.total_ns / self.count / 1e6 if self.count else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "p50_ms": self.percentile_ms(50), "p90_ms": self.percentile_ms(90),
                "p99_ms": self.percentile_ms(99), "p999_ms": self.percentile_ms(99.9),
                "max_ms": self.max_ns / 1e6, "mean_ms": self.mean_ms()}


class DeadlineTracker:
    """Achieved rate and missed deadlines of a periodic loop.

    Tick ``k`` is due at ``expected_ns`` (the timer's scheduled time); its deadline is the next
    tick's time, ``expected_ns + period``. A tick finishing later misses its deadline; a slot the
    timer skipped (``expected_ns`` jumped by more than one period) is a missed deadline too.
    """

    def __init__(self, period_ns: int):
        self.period_ns = int(period_ns)
        self.reset()

    def reset(self) -> None:
        self.ticks = 0
        self.late = 0
        self.skipped = 0
        self.first_ns: Optional[int] = None
        self.last_expected_ns: Optional[int] = None
        self.last_end_ns: Optional[int] = None
        self.lateness = LatencyStats()

    @property
    def missed(self) -> int:
        return self.late + self.skipped

    def observe(self, expected_ns: int, start_ns: int, end_ns: int) -> bool:
        """Record one tick; True if it missed its deadline (or slots were skipped before it)."""
        missed = False
        if self.last_expected_ns is not None:
            gap = int(round((expected_ns - self.last_expected_ns) / self.period_ns)) - 1
            if gap > 0:
                self.skipped += gap
                missed = True
        if end_ns > expected_ns + self.period_ns:
            self.late += 1
            missed = True
        if self.first_ns is None:
            self.first_ns = expected_ns
        self.last_expected_ns = expected_ns
        self.last_end_ns = end_ns
        self.ticks += 1
        self.lateness.add(max(0, start_ns - expected_ns))
        return missed

    def achieved_rate_hz(self) -> float:
        if self.ticks < 2 or self.first_ns is None or self.last_expected_ns is None:
            return float("nan")
        span = self.last_expected_ns - self.first_ns
        return (self.ticks - 1) * 1e9 / span if span > 0 else float("nan")


# --------------------------------------------------------------------------- watchdog
