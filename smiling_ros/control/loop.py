"""The control loop behind ``controller_node``, free of ROS so it can be tested without it.

One :class:`ControlLoop` owns a policy, the observation assembler (the same field mapping
import-bag uses, :class:`smiling_ros.io.fields.VectorAssembler`), the action limits, the
watchdog and the statistics. The node only translates: every received message goes to
:meth:`ControlLoop.on_message`, every timer tick to :meth:`ControlLoop.tick`, whose
:class:`TickResult` says what (if anything) to publish.

Safety rules, enforced here for every tick:

- No observation yet, or the newest one older than ``watchdog_periods`` control periods: the
  watchdog is *stale*. ``on_stale='stop'`` publishes nothing (after one ``stop_action`` command,
  see below); ``on_stale='hold'`` republishes the last command. Commands resume, and the policy
  is reset, on the first tick with a fresh observation. Since no command is computed from an
  observation older than ``watchdog_periods`` periods, the last command after a sensor stops
  is published at most ``watchdog_periods`` periods after its last message.
- An observation of the wrong size or with NaN/inf (or beyond ``observation_max_abs``), a policy
  that raises or returns a non-finite action: no command for that tick, and a warning (the node
  throttles it). Invalid input for ``watchdog_periods`` periods in a row stops like a stale
  observation (the ``stop_action`` command once; never ``hold``). A message of the wrong size is
  rejected on arrival, so it never refreshes the observation either.
- Every published action is finite and inside ``[low, high]`` (clamped; checked again after
  clamping).
- E-stop engaged: nothing is published until it is released.
- ``stop_action='zero'``: entering a stop (watchdog stop, e-stop, deactivate, shutdown) publishes
  one all-zero command, then nothing. ros2_control's forward command controllers keep applying
  the last command they received, so for velocity and effort interfaces (both shipped tasks)
  one zero is what stops the robot. For position interfaces zero is a pose, not a stop: use
  ``stop_action='none'`` there (the controller then holds its last position target).

Times are integers in nanoseconds of one monotonic clock (``time.monotonic_ns``, the clock
ROS steady timers use).
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from smiling_ros.control.settings import ON_STALE, STOP_ACTIONS, WATCHDOG_OK, WATCHDOG_STALE, WATCHDOG_WAITING  # noqa
from smiling_ros.control.stats import DeadlineTracker, LatencyStats  # noqa
from smiling_ros.control.watchdog import Watchdog  # noqa
from smiling_ros.errors import UserError


# --------------------------------------------------------------------------- the loop
@dataclass
class TickResult:
    """What one tick decided. ``action`` (float64, (act_dim,)) is to be published when not None.

    reason: ``command``, ``hold``, ``stop`` (the one stop_action command), ``estop``, ``waiting``,
    ``stale``, ``bad_observation``, ``bad_action``, ``policy_error``.
    warning: a line to log (throttled by the caller); event: a state change to log (unthrottled).
    """

    action: Optional[np.ndarray]
    reason: str
    warning: Optional[str] = None
    event: Optional[str] = None
    chunk: Optional[np.ndarray] = None  # chunked loops: the whole plan (chunk, act_dim), action = chunk[0]


class ControlLoop:
    """Observation -> policy -> clamp, with the watchdog, e-stop and the statistics.

    Thread-safety: ``tick``, ``on_message``, ``set_estop`` and ``stop_command`` may be called from
    different threads (one lock, held briefly; the policy runs under it, so a swap offered with
    :meth:`offer_policy` takes effect between two ticks).
    """

    def __init__(self, policy: Any, assembler: Any, low: np.ndarray, high: np.ndarray, period_ns: int,
                 watchdog_periods: int = 2, on_stale: str = "stop", stop_action: str = "zero",
                 policy_path: str = "", chunked: bool = False):
        self.low = np.asarray(low, np.float64).copy()
        self.high = np.asarray(high, np.float64).copy()
        self.act_dim = int(self.low.shape[0])
        self._low_list, self._high_list = self.low.tolist(), self.high.tolist()
        if not all(math.isfinite(v) for v in self._low_list + self._high_list) or np.any(self.low > self.high):
            raise UserError(f"action limits must be finite with low <= high, got {self._low_list}..{self._high_list}")
        if stop_action == "zero" and np.any((self.low > 0) | (self.high < 0)):
            raise UserError("stop_action 'zero': 0 is outside the action limits; use stop_action 'none' "
                            "or limits that contain 0")
        self.policy = policy
        self.policy_path = policy_path
        self.chunked = bool(chunked)  # plan whole chunks (TickResult.chunk) instead of one action per tick
        self.assembler = assembler
        self.period_ns = int(period_ns)
        self.watchdog = Watchdog(self.period_ns, watchdog_periods)
        self.on_stale = on_stale
        self.stop_action = stop_action
        self.estop = False
        self.latency = LatencyStats()  # policy + clamp time per command [ns]
        self.deadlines = DeadlineTracker(self.period_ns)
        self.counts: Counter[str] = Counter()
        self.clamped = 0
        self.swaps = 0
        self.last_action: Optional[np.ndarray] = None
        self.last_reason = "waiting"
        self._stopped = True  # True once the stop command went out (or nothing was commanded yet)
        self._pending: Optional[tuple[Any, str]] = None
        self._invalid_since: Optional[int] = None  # first tick of the current run of invalid input
        self._reset_pending = False
        self._lock = threading.Lock()
        self._torch = _torch_inference_mode()

    # ---- inputs
    def on_message(self, topic: str, msg: Any, now_ns: int, ros_ns: Optional[int] = None) -> Optional[str]:
        """Feed one message received at ``now_ns`` (the loop's clock) and ``ros_ns`` (ROS time, the
        clock of header stamps; default ``now_ns``); returns a warning line if it was rejected."""
        try:
            with self._lock:
                self.assembler.update(topic, msg, now_ns, ros_ns=ros_ns)
        except UserError as exc:
            self.counts["rejected_message"] += 1
            return f"observation rejected: {exc}"
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            self.counts["rejected_message"] += 1
            return f"observation on {topic} rejected: {type(exc).__name__}: {exc}"
        return None

    def offer_policy(self, policy: Any, path: str) -> None:
        """Hand over a loaded, checked policy; it replaces the current one at the next tick."""
        with self._lock:
            self._pending = (policy, path)

    def request_reset(self) -> None:
        """Reset the policy's state (observation window, action chunk) before the next tick, e.g. at
        an episode start."""
        with self._lock:
            self._reset_pending = True

    def set_estop(self, engaged: bool) -> Optional[np.ndarray]:
        """Engage/release the e-stop; returns the stop command to publish on engaging, if any."""
        with self._lock:
            was, self.estop = self.estop, bool(engaged)
            if engaged and not was:
                self.counts["estop_engaged"] += 1
                return self._stop_locked()
            if was and not engaged:
                self.policy.reset()
            return None

    def stop_command(self) -> Optional[np.ndarray]:
        """The one command to send when the loop stops (deactivate, shutdown), if any."""
        with self._lock:
            return self._stop_locked()

    def reset(self) -> None:
        """Start afresh (activate): watchdog waiting, policy state and statistics cleared."""
        with self._lock:
            self.watchdog.reset()
            self.policy.reset()
            self.latency.reset()
            self.deadlines.reset()
            self.counts.clear()
            self.clamped = 0
            self.last_action = None
            self._stopped = True
            self._invalid_since = None

    def reset_stats(self) -> None:
        """Clear the statistics (latency, deadlines, counts) without touching the control state."""
        with self._lock:
            self.latency.reset()
            self.deadlines.reset()
            self.counts.clear()
            self.clamped = 0
            self.swaps = 0
            self.watchdog.stale_events = 0

    def _stop_locked(self) -> Optional[np.ndarray]:
        if self._stopped:
            return None
        self._stopped = True
        self.last_action = None
        if self.stop_action == "zero":
            return np.zeros(self.act_dim, np.float64)
        return None

    # ---- the tick
    def tick(self, now_ns: int) -> TickResult:
        with self._lock:
            r = self._tick_locked(now_ns)
        self.counts[r.reason] += 1
        self.last_reason = r.reason
        return r

    def _tick_locked(self, now_ns: int) -> TickResult:
        event = None
        if self._pending is not None:
            self.policy, self.policy_path = self._pending
            self._pending = None
            self.policy.reset()
            self.swaps += 1
            event = f"policy swapped to {self.policy_path}"
        if self._reset_pending:
            self._reset_pending = False
            self.policy.reset()
        stamp = self.assembler.oldest_stamp_ns() if self.assembler.ready() else None
        state, wd_event = self.watchdog.check(now_ns, stamp)
        event = wd_event or event
        if self.estop:
            return TickResult(None, "estop", event=event)
        if state != WATCHDOG_OK:
            self._invalid_since = None
            reason = "waiting" if state == WATCHDOG_WAITING else "stale"
            if self.on_stale == "hold" and self.last_action is not None:
                return TickResult(self.last_action.copy(), "hold", event=event)
            stop = self._stop_locked()
            return TickResult(stop, "stop" if stop is not None else reason, event=event)
        if wd_event is not None:
            self.policy.reset()  # fresh again after a gap: forget observation windows / chunks
        try:
            obs = np.asarray(self.assembler.vector(), np.float64)
        except UserError as exc:  # NaN/inf/out-of-range values (the assembler names topic and field)
            return self._invalid(now_ns, "bad_observation", f"{exc}; not commanding", event)
        if obs.shape != (int(self.policy.obs_dim),):
            return self._invalid(now_ns, "bad_observation", f"observation has {obs.size} elements, the policy "
                                 f"takes {self.policy.obs_dim}; not commanding", event)
        if not math.isfinite(float(obs.sum())):  # NaN/inf anywhere makes the sum non-finite
            bad = np.flatnonzero(~np.isfinite(obs))
            return self._invalid(now_ns, "bad_observation",
                                 f"observation has non-finite values at {bad[:8].tolist()}; not commanding", event)
        chunk = None
        try:
            with self._torch():
                if self.chunked:
                    chunk = np.asarray(_plan_chunk(self.policy, obs.astype(np.float32)), np.float64)
                    if chunk.ndim != 2 or chunk.shape[0] < 1:
                        raise ValueError(f"plan of shape {chunk.shape}, expected (chunk, act_dim)")
                    raw = chunk[0]
                else:
                    raw = self.policy.act(obs.astype(np.float32))
            a = np.asarray(raw, np.float64).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - any policy failure must cost one tick, not the loop
            return self._invalid(now_ns, "policy_error", f"policy failed: {type(exc).__name__}: {exc}; "
                                 "not commanding", event)
        if a.shape[0] != self.act_dim:
            return self._invalid(now_ns, "bad_action", f"policy returned {a.shape[0]} action elements, the "
                                 f"limits have {self.act_dim}; not commanding", event)
        # Clamp element by element in Python (a handful of floats: faster than numpy calls), checking
        # finiteness on the way; the limits are finite, so every element sent lies in [low, high].
        out = []
        clamped = False
        for v, lo, hi in zip(a.tolist(), self._low_list, self._high_list):
            if not math.isfinite(v):
                return self._invalid(now_ns, "bad_action", f"policy returned a non-finite action "
                                     f"{a[:8].tolist()}; not commanding", event)
            c = lo if v < lo else (hi if v > hi else v)
            if c != v:
                clamped = True
            if not lo <= c <= hi:  # unreachable with finite limits; the invariant is checked anyway
                return self._invalid(now_ns, "bad_action", "action outside limits after clamping", event)
            out.append(c)
        if clamped:
            self.clamped += 1
        clipped = np.array(out, np.float64)
        if chunk is not None:
            if chunk.shape[1] != self.act_dim or not np.all(np.isfinite(chunk)):
                return self._invalid(now_ns, "bad_action", "policy planned a non-finite or wrong-size chunk; "
                                     "not commanding", event)
            chunk = np.clip(chunk, self.low, self.high)
            chunk[0] = clipped
        self.last_action = clipped
        self._stopped = False
        self._invalid_since = None
        return TickResult(clipped.copy(), "command", event=event, chunk=chunk)

    def _invalid(self, now_ns: int, reason: str, warning: str, event: Optional[str]) -> TickResult:
        """No command this tick; after ``watchdog_periods`` periods of invalid input, the stop command."""
        if self._invalid_since is None:
            self._invalid_since = now_ns
        if now_ns - self._invalid_since >= self.watchdog.limit_ns:
            stop = self._stop_locked()
            if stop is not None:
                return TickResult(stop, "stop", warning=warning, event=event or (
                    f"{reason.replace('_', ' ')} for {self.watchdog.periods} periods; stopped commanding"))
        return TickResult(None, reason, warning=warning, event=event)

    def record(self, expected_ns: int, start_ns: int, end_ns: int, result: TickResult) -> bool:
        """Account one tick's timing (``expected_ns``: the timer's scheduled time; start/end of the
        callback including the publish). Latency is kept for ticks that ran the policy.
        Returns True if the tick missed its deadline."""
        if result.reason == "command":
            self.latency.add(end_ns - start_ns)
        return self.deadlines.observe(expected_ns, start_ns, end_ns)

    # ---- reporting
    def diagnostics(self) -> dict[str, Any]:
        """Key figures for /diagnostics and tests (latency in ms, counts since activation)."""
        d = self.deadlines
        return {
            "watchdog": self.watchdog.state,
            "estop": self.estop,
            "policy": self.policy_path,
            "ticks": d.ticks,
            "commands": self.counts["command"],
            "held": self.counts["hold"],
            "missed_deadlines": d.missed,
            "late_ticks": d.late,
            "skipped_ticks": d.skipped,
            "achieved_rate_hz": d.achieved_rate_hz(),
            "latency_p50_ms": self.latency.percentile_ms(50),
            "latency_p99_ms": self.latency.percentile_ms(99),
            "latency_max_ms": self.latency.max_ns / 1e6,
            "lateness_p99_ms": d.lateness.percentile_ms(99),
            "last_reason": self.last_reason,
            "bad_observations": self.counts["bad_observation"],
            "rejected_messages": self.counts["rejected_message"],
            "bad_actions": self.counts["bad_action"] + self.counts["policy_error"],
            "clamped": self.clamped,
            "stale_events": self.watchdog.stale_events,
            "swaps": self.swaps,
        }


def _plan_chunk(policy: Any, obs: np.ndarray) -> np.ndarray:
    from smiling_ros.learn.policy import plan_chunk  # torch is imported only where a policy runs

    return plan_chunk(policy, obs)


def _torch_inference_mode() -> Callable[[], Any]:
    try:
        import torch

        return torch.inference_mode
    except ImportError:  # pragma: no cover - torch is a dependency
        import contextlib

        return contextlib.nullcontext
