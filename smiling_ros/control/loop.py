"""The control loop behind ``controller_node``, free of ROS so it can be tested without it.

One :class:`ControlLoop` owns a policy, the observation assembler (the same field mapping
import-bag uses, :class:`smiling_ros.io.fields.VectorAssembler`), the action limits, the
watchdog and the statistics. The node only translates: every received message goes to
:meth:`ControlLoop.on_message`, every timer tick to :meth:`ControlLoop.tick`, whose
:class:`TickResult` says what (if anything) to publish.

Safety rules, enforced here at every tick (one fault policy):

- The assembler names every observation field that may not be used now
  (:meth:`VectorAssembler.faults`: no sample yet, stale against the field's maximum age, a
  frozen stamp, a missing joint or unreadable message, an implausible header stamp, NaN/inf or
  beyond ``observation_max_abs``). A policy that raises or returns a non-finite action, or an
  action the envelope cannot make safe, is a fault too.
- Any fault: no command is computed at that tick. Instead the fault action: ``zero`` sends one
  all-zero command when the fault starts, then nothing (ros2_control's forward controllers keep
  applying the last command they received, so for velocity and effort interfaces one zero is
  what stops the robot); ``hold`` repeats the last command sent (never a new one); ``none``
  sends nothing (position interfaces: the controller holds its last target). The fault episode
  is logged once (the first field at fault by name, e.g. ``/joint_states:position[elbow]``,
  with its stamp in ROS time) and counted by kind.
- Commands resume at the first tick with no fault; the policy is reset and the envelope ramps
  in again (:class:`smiling_ros.control.envelope.SafetyEnvelope`).
- Every command passes the envelope: finite, inside ``[low, high]``, rate-limited, ramped in,
  and for position commands near the measured position.
- E-stop engaged: one zero command if ``stop_action`` is ``zero``, then nothing until released;
  the release ramps in. Deactivate and shutdown send the same stop command.
- A message of the wrong size is rejected on arrival; its field is at fault until a good one.

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

from smiling_ros.control.envelope import SafetyEnvelope
from smiling_ros.control.settings import WATCHDOG_OK, WATCHDOG_WAITING
from smiling_ros.control.stats import DeadlineTracker, LatencyStats  # noqa
from smiling_ros.control.watchdog import Watchdog
from smiling_ros.errors import UserError


# --------------------------------------------------------------------------- the loop
@dataclass
class TickResult:
    """What one tick decided. ``action`` (float64, (act_dim,)) is to be published when not None.

    reason: ``command`` (a policy command), ``hold`` (the last command again, on a fault),
    ``stop`` (the one zero command), ``fault`` (a fault, nothing sent), ``estop``, ``waiting``
    (not every input seen yet).
    warning: a line to log (throttled by the caller); event: a state change to log once (a fault
    episode's start, naming the field, or its end).
    """

    action: Optional[np.ndarray]
    reason: str
    warning: Optional[str] = None
    event: Optional[str] = None
    chunk: Optional[np.ndarray] = None  # chunked loops: the whole plan (chunk, act_dim), action = chunk[0]


class ControlLoop:
    """Observation -> policy -> safety envelope, with the fault policy, e-stop and the statistics.

    Thread-safety: ``tick``, ``on_message``, ``set_estop`` and ``stop_command`` may be called from
    different threads (one lock, held briefly; the policy runs under it, so a swap offered with
    :meth:`offer_policy` takes effect between two ticks).
    """

    def __init__(self, policy: Any, assembler: Any, low: np.ndarray, high: np.ndarray, period_ns: int,
                 watchdog_periods: int = 2, on_stale: str = "stop", stop_action: str = "zero",
                 policy_path: str = "", chunked: bool = False, envelope: Optional[SafetyEnvelope] = None,
                 measured_index: Optional[np.ndarray] = None):
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
        self.watchdog = Watchdog(self.period_ns)
        self.watchdog_periods = int(watchdog_periods)
        self.on_stale = on_stale
        self.stop_action = stop_action
        self.fault_action = "hold" if on_stale == "hold" else stop_action
        self.envelope = envelope if envelope is not None else SafetyEnvelope(self.low, self.high, self.period_ns)
        if not (np.array_equal(self.envelope.low, self.low) and np.array_equal(self.envelope.high, self.high)):
            raise UserError("the safety envelope's limits differ from the loop's action limits")
        self.measured_index = None if measured_index is None else np.asarray(measured_index, np.int64)
        self.last_measured: Optional[np.ndarray] = None
        if self.envelope.needs_measured and self.measured_index is None:
            raise UserError("position commands with a ramp, rate limit or controller.max_position_error need the "
                            "measured positions of the command joints in the observation (JointState position)")
        self.estop = False
        self.latency = LatencyStats()  # policy + clamp time per command [ns]
        self.deadlines = DeadlineTracker(self.period_ns)
        self.counts: Counter[str] = Counter()
        self.clamped = 0
        self.swaps = 0
        self.last_action: Optional[np.ndarray] = None
        self.last_reason = "waiting"
        self._stopped = True  # True once the stop command went out (or nothing was commanded yet)
        self._commanding = False  # the previous tick sent a policy command (else the next one ramps in)
        self._pending: Optional[tuple[Any, str]] = None
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
                self._commanding = False  # the next command ramps in
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
            self._commanding = False

    def reset_stats(self) -> None:
        """Clear the statistics (latency, deadlines, counts) without touching the control state."""
        with self._lock:
            self.latency.reset()
            self.deadlines.reset()
            self.counts.clear()
            self.clamped = 0
            self.swaps = 0
            self.watchdog.reset_stats()
            self.envelope.limited = 0

    def _stop_locked(self) -> Optional[np.ndarray]:
        if self._stopped:
            return None
        self._stopped = True
        self._commanding = False
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
        faults = self.assembler.faults(now_ns)
        state, wd_event = self.watchdog.check(now_ns, faults)
        event = wd_event or event
        if self.estop:
            self._commanding = False
            return TickResult(None, "estop", event=event)
        if state == WATCHDOG_WAITING:
            return TickResult(None, "waiting", event=event)
        if state != WATCHDOG_OK:
            return self._fault(event)
        try:
            obs = np.asarray(self.assembler.vector(), np.float64)
        except UserError as exc:  # not reachable when faults() is empty; checked anyway
            return self._extra(now_ns, "observation", str(exc), event)
        if obs.shape != (int(self.policy.obs_dim),):
            return self._extra(now_ns, "observation", f"observation has {obs.size} elements, the policy takes "
                               f"{self.policy.obs_dim}", event)
        if not self._commanding:  # first command after activate, a fault or an e-stop release
            self.policy.reset()
            self.envelope.restart(now_ns)
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
        except Exception as exc:  # noqa: BLE001 - any policy failure is a fault, not the end of the loop
            return self._extra(now_ns, "policy_error", f"policy failed: {type(exc).__name__}: {exc}", event)
        if a.shape[0] != self.act_dim:
            return self._extra(now_ns, "bad_action", f"policy returned {a.shape[0]} action elements, the limits "
                               f"have {self.act_dim}", event)
        if not math.isfinite(float(a.sum())):
            return self._extra(now_ns, "bad_action", f"policy returned a non-finite action {a[:8].tolist()}", event)
        measured = obs[self.measured_index] if self.measured_index is not None else None
        self.last_measured = measured  # read by a command stream between ticks
        cmd = self.envelope.apply(a, now_ns, measured)
        if cmd is None:
            return self._extra(now_ns, "bad_action", "the envelope refused the action (non-finite measured "
                               "position?)", event)
        if np.any((a < self.low) | (a > self.high)):
            self.clamped += 1
        if chunk is not None:
            if chunk.shape[1] != self.act_dim or not np.all(np.isfinite(chunk)):
                return self._extra(now_ns, "bad_action", "policy planned a non-finite or wrong-size chunk", event)
            chunk = np.clip(chunk, self.low, self.high)
            chunk[0] = cmd
        self.last_action = cmd
        self._stopped = False
        self._commanding = True
        return TickResult(cmd.copy(), "command", event=event, chunk=chunk)

    def _extra(self, now_ns: int, kind: str, line: str, event: Optional[str]) -> TickResult:
        """A fault found after the inputs passed (policy, action): the fault action at this tick."""
        extra = self.watchdog.extra(now_ns, kind, line)
        return self._fault(extra or event)

    def _fault(self, event: Optional[str]) -> TickResult:
        """No command from the policy at this tick: the fault action (see the module doc)."""
        self._commanding = False
        if self.fault_action == "hold" and self.last_action is not None:
            return TickResult(self.last_action.copy(), "hold", event=event)
        stop = self._stop_locked()
        return TickResult(stop, "stop" if stop is not None else "fault", event=event)

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
        wd = self.watchdog
        return {
            "watchdog": wd.state,
            "fault": wd.current[0] if wd.current else "",
            "fault_episodes": wd.episodes,
            **{f"faults_{k}": wd.kinds[k] for k in sorted(wd.kinds)},
            "fault_ticks": self.counts["fault"] + self.counts["stop"] + self.counts["hold"],
            "rate_limited": self.envelope.limited,
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
            "rejected_messages": self.counts["rejected_message"],
            "clamped": self.clamped,
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
