"""Input faults: the per-tick verdict over the observation's fields (ROS-free).

The observation assembler (:class:`smiling_ros.io.fields.VectorAssembler`) names every field that
may not be used at a tick (:class:`smiling_ros.io.fields.FieldFault`: stale, frozen, missing
joint, NaN/inf, out of range, implausible stamp). :class:`Watchdog` turns those into one state
per tick and into fault *episodes* (from the first tick with a fault to the next tick with none),
each logged once with the field at fault and counted by kind.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

from smiling_ros.control.settings import WATCHDOG_FAULT, WATCHDOG_OK, WATCHDOG_WAITING  # noqa


class Watchdog:
    """``waiting`` (not every field seen yet, nothing else wrong) -> ``ok`` <-> ``fault``.

    ``check(now_ns, faults)`` is called once per tick with the assembler's faults (an empty list:
    all fields fresh and valid). Returns ``(state, event)``; ``event`` is one line when a fault
    episode starts (naming the first field at fault, its stamp, and how many more) or ends.
    Other faults (a policy that fails, a non-finite action) enter through :meth:`extra`.
    """

    def __init__(self, period_ns: int):
        self.period_ns = int(period_ns)
        self.state = WATCHDOG_WAITING
        self.episodes = 0  # fault episodes since the last reset of the statistics
        self.kinds: Counter[str] = Counter()  # fault episodes in which each kind occurred
        self.current: list[str] = []  # the faults of the current tick, one line each
        self._episode_kinds: set[str] = set()
        self._since_ns: Optional[int] = None

    @property
    def stale_events(self) -> int:
        return self.episodes

    def check(self, now_ns: int, faults: Sequence[Any]) -> tuple[str, Optional[str]]:
        real = [f for f in faults if f.kind != "waiting"]
        if not real and faults:
            new = WATCHDOG_WAITING if self.state == WATCHDOG_WAITING else WATCHDOG_FAULT
            # a field that was seen never goes back to "no sample": only reset() does that
            real = list(faults) if new == WATCHDOG_FAULT else []
        else:
            new = WATCHDOG_FAULT if real else WATCHDOG_OK
        return self._enter(now_ns, new, real)

    def extra(self, now_ns: int, kind: str, line: str) -> Optional[str]:
        """A fault found after the inputs were checked (policy error, bad action) at this tick."""
        fault = _Fault(kind, line)
        return self._enter(now_ns, WATCHDOG_FAULT, [fault])[1]

    def _enter(self, now_ns: int, new: str, faults: Sequence[Any]) -> tuple[str, Optional[str]]:
        event = None
        self.current = [str(f) for f in faults]
        if new == WATCHDOG_FAULT:
            kinds = {f.kind for f in faults}
            if self.state != WATCHDOG_FAULT:
                self.episodes += 1
                self._episode_kinds = set()
                self._since_ns = int(now_ns)
                more = f" (+{len(faults) - 1} more)" if len(faults) > 1 else ""
                event = f"fault: {faults[0].kind}: {faults[0]}{more}; stopped commanding"
            for k in kinds - self._episode_kinds:
                self.kinds[k] += 1
            self._episode_kinds |= kinds
        elif new == WATCHDOG_OK:
            if self.state == WATCHDOG_WAITING:
                event = "inputs fresh; commanding"
            elif self.state == WATCHDOG_FAULT:
                periods = (int(now_ns) - (self._since_ns or int(now_ns))) / self.period_ns
                event = f"inputs fresh and valid again after {periods:.0f} periods; resumed commanding"
        self.state = new
        return new, event

    def reset(self) -> None:
        """Start waiting again (activate)."""
        self.state = WATCHDOG_WAITING
        self.current = []
        self._since_ns = None

    def reset_stats(self) -> None:
        self.episodes = 0
        self.kinds.clear()


class _Fault:
    """A fault that is not about one observation field (same shape as FieldFault for logging)."""

    def __init__(self, kind: str, line: str):
        self.kind, self.line = kind, line

    def __str__(self) -> str:
        return self.line
