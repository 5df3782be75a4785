"""The safety envelope every command passes through before it reaches the robot (ROS-free).

:class:`SafetyEnvelope` turns a wanted action into the command that may be sent now::

    env = SafetyEnvelope(low, high, period_ns, max_rate=[2.0] * 6, ramp_in_s=0.5)
    env.restart(now_ns)                      # after activate, a fault's end, an e-stop release
    cmd = env.apply(action, now_ns)          # float64 (n,), or None: nothing may be sent
    cmd = env.apply(action, now_ns, measured=q)   # position commands: q = measured positions

In this order, for each element ``i`` (units are those of the command: rad, rad/s, N m, ...):

1. **Ramp-in**: for ``ramp_in_s`` after :meth:`restart` the command is blended from the origin
   (0 for velocity/effort commands; the measured position for position commands) towards the
   action, linearly in time: ``origin + s (action - origin)``, ``s`` rising to 1 over
   ``ramp_in_s`` from one period before the restart (so the first command is already one step
   along, never the origin itself).
2. **Limits**: clamped to ``[low[i], high[i]]``.
3. **Rate limit**: the change from the previous command is at most ``max_rate[i]`` per second of
   time between them (the first command after :meth:`restart` counts from the origin, one
   ``period_ns`` earlier).
4. **Distance from the measured position** (position commands, ``max_error`` set): clamped to
   ``[measured[i] - max_error[i], measured[i] + max_error[i]]`` (and again to the limits). This
   step may undo part of step 3 when the robot lags its command: the command is then pulled back
   towards where the robot is.

A non-finite action, or a missing/non-finite ``measured`` when it is needed, gives None. Every
command :meth:`apply` returns is finite and inside the limits. Stop commands (the all-zero
``stop_action``) do not pass through here: stopping is never delayed by a ramp or a rate limit.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from smiling_ros.errors import UserError


def _per_element(values: Optional[Sequence[float]], n: int, name: str) -> Optional[np.ndarray]:
    """None/[] -> None; one value -> n copies; n values -> array. Each must be finite and > 0."""
    if values is None or len(values) == 0:
        return None
    arr = np.asarray(list(values), np.float64).reshape(-1)
    if arr.shape[0] == 1:
        arr = np.full(n, float(arr[0]))
    if arr.shape[0] != n:
        raise UserError(f"{name}: {arr.shape[0]} values for {n} command elements (give one, or one per element)")
    if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise UserError(f"{name}: every value must be finite and > 0, got {arr.tolist()}")
    return arr


class SafetyEnvelope:
    """Limits, rate limits, ramp-in and (for positions) distance from the measured position.

    low, high: per-element command limits (finite, low <= high). period_ns: the command period,
    used for the first command after :meth:`restart`. max_rate: per-element maximum change per
    second (one value for all, or none). ramp_in_s: ramp duration after :meth:`restart` (0: none).
    max_error: per-element maximum distance between a position command and the measured position.
    position: the command is a position (origin of the ramp = the measured position).
    """

    def __init__(self, low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray, period_ns: int,
                 max_rate: Optional[Sequence[float]] = None, ramp_in_s: float = 0.0,
                 max_error: Optional[Sequence[float]] = None, position: bool = False):
        self.low = np.asarray(low, np.float64).reshape(-1).copy()
        self.high = np.asarray(high, np.float64).reshape(-1).copy()
        n = self.low.shape[0]
        if self.high.shape != (n,) or not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))) \
                or np.any(self.low > self.high):
            raise UserError(f"action limits must be finite with low <= high, got {self.low.tolist()}.."
                            f"{self.high.tolist()}")
        if not period_ns > 0:
            raise UserError(f"command period must be > 0 ns, got {period_ns}")
        if not (math.isfinite(ramp_in_s) and ramp_in_s >= 0):
            raise UserError(f"controller.ramp_in_s: must be >= 0 s, got {ramp_in_s}")
        self.n = n
        self.period_ns = int(period_ns)
        self.max_rate = _per_element(max_rate, n, "controller.max_rate")
        self.max_error = _per_element(max_error, n, "controller.max_position_error")
        self.ramp_ns = int(round(ramp_in_s * 1e9))
        self.position = bool(position)
        self.last: Optional[np.ndarray] = None  # the previous command returned by apply
        self.last_ns: Optional[int] = None
        self._ramp_from_ns: Optional[int] = None
        self._origin: Optional[np.ndarray] = None
        self.limited = 0  # commands changed by the rate limit or the distance window

    @property
    def needs_measured(self) -> bool:
        """True when :meth:`apply` needs the measured positions."""
        return self.position and (self.max_error is not None or self.ramp_ns > 0 or self.max_rate is not None)

    def restart(self, now_ns: int) -> None:
        """Forget the previous command and ramp in from the origin starting at ``now_ns``."""
        self.last = None
        self.last_ns = None
        self._origin = None
        # The first command is one period into the ramp (a zero first command would read as a stop).
        self._ramp_from_ns = int(now_ns) - self.period_ns if self.ramp_ns > 0 else None

    def note_sent(self, command: np.ndarray, now_ns: int) -> None:
        """Record a command sent without :meth:`apply` (a held command)."""
        self.last = np.asarray(command, np.float64).copy()
        self.last_ns = int(now_ns)

    def apply(self, action: Sequence[float] | np.ndarray, now_ns: int,
              measured: Optional[Sequence[float] | np.ndarray] = None
              ) -> Optional[np.ndarray]:
        """The command to send at ``now_ns`` for ``action`` (see the module doc), or None."""
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (self.n,) or not np.all(np.isfinite(a)):
            return None
        m = None
        if measured is not None:
            m = np.asarray(measured, np.float64).reshape(-1)
            if m.shape != (self.n,) or not np.all(np.isfinite(m)):
                return None
        if self.needs_measured and m is None:
            return None
        now_ns = int(now_ns)
        if self.last is None or self._origin is None:
            origin = m.copy() if (self.position and m is not None) else np.zeros(self.n)
            self._origin = np.clip(origin, self.low, self.high)
        base: np.ndarray = self._origin
        if self._ramp_from_ns is not None:
            s = (now_ns - self._ramp_from_ns) / self.ramp_ns
            if s >= 1.0:
                self._ramp_from_ns = None
            else:
                s = max(0.0, s)
                a = base + s * (a - base)
        cmd = np.clip(a, self.low, self.high)
        changed = False
        if self.max_rate is not None:
            prev = self.last if self.last is not None else base
            dt = (now_ns - self.last_ns) if self.last_ns is not None else self.period_ns
            step = self.max_rate * (max(0, dt) / 1e9)
            limited = np.clip(cmd, prev - step, prev + step)
            changed = bool(np.any(limited != cmd))
            cmd = limited
        if self.max_error is not None and m is not None:
            windowed = np.clip(np.clip(cmd, m - self.max_error, m + self.max_error), self.low, self.high)
            changed = changed or bool(np.any(windowed != cmd))
            cmd = windowed
        if not np.all(np.isfinite(cmd)) or np.any(cmd < self.low) or np.any(cmd > self.high):
            return None  # unreachable with finite inputs; the invariant is checked anyway
        if changed:
            self.limited += 1
        self.last = cmd
        self.last_ns = now_ns
        return cmd.copy()
