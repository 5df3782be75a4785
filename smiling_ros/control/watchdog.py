"""Observation freshness: the watchdog that stops commanding from stale input."""
from __future__ import annotations

from typing import Optional

from smiling_ros.control.settings import WATCHDOG_OK, WATCHDOG_STALE, WATCHDOG_WAITING  # noqa


class Watchdog:
    """Observation freshness: ``waiting`` (none yet) -> ``ok`` <-> ``stale``.

    ``check(now, newest)`` is called once per tick with the receive time of the oldest of the
    latest messages of each observation topic (the vector is only as fresh as its oldest part).
    Returns ``(state, event)``; ``event`` is a one-line description on a state change, else None.
    """

    def __init__(self, period_ns: int, periods: int):
        self.limit_ns = int(period_ns) * int(periods)
        self.periods = int(periods)
        self.state = WATCHDOG_WAITING
        self.stale_events = 0
        self.last_age_ns: Optional[int] = None

    def check(self, now_ns: int, stamp_ns: Optional[int]) -> tuple[str, Optional[str]]:
        if stamp_ns is None:
            self.last_age_ns = None
            new = WATCHDOG_WAITING if self.state == WATCHDOG_WAITING else WATCHDOG_STALE
        else:
            self.last_age_ns = now_ns - stamp_ns
            new = WATCHDOG_OK if self.last_age_ns <= self.limit_ns else WATCHDOG_STALE
        event = None
        if new != self.state:
            if new == WATCHDOG_STALE:
                self.stale_events += 1
                age = "none" if self.last_age_ns is None else f"{self.last_age_ns / 1e6:.1f} ms old"
                event = (f"watchdog: observation stale ({age}, limit {self.limit_ns / 1e6:.1f} ms = "
                         f"{self.periods} periods); stopped commanding")
            elif new == WATCHDOG_OK:
                event = ("watchdog: observations fresh; commanding" if self.state == WATCHDOG_WAITING
                         else "watchdog: observations fresh again; resumed commanding")
        self.state = new
        return new, event

    def reset(self) -> None:
        self.state = WATCHDOG_WAITING
        self.last_age_ns = None
