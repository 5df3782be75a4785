"""Policy rate and command rate apart: planned action chunks, streamed at the robot's rate.

The policy runs at its trained rate (the policy step ``dt``) on a thread of its own and plans a
chunk per step (BRIDGER with ``chunk`` > 1; any other policy is a chunk of one). Action ``k`` of a
chunk planned from the observation of policy tick ``t0`` is for time ``t0 + k dt``: every planned
action carries its time (:class:`ActionSchedule` keeps them on the policy's time grid). The
command stream, ticked by the caller at the robot's rate (e.g. 500 Hz), reads the schedule:

- ``sample(now)``: the action for ``now``, interpolated linearly between the planned actions of
  the two grid times around it; after the last planned action it is held for at most one policy
  step, then nothing (the planner is late or stopped: no command from an old plan);
- ``points(now)``: the planned actions still ahead with their times relative to ``now`` (for a
  joint_trajectory_controller, which interpolates itself).

Overlapping chunks: ``blend='replace'`` (receding horizon: a new chunk replaces the old plan from
its first action on) or ``blend='ensemble'`` (temporal ensembling as in ACT: every prediction for a
grid time is kept and the action is their weighted mean with weights ``exp(-decay * i)``, ``i`` = 0
for the oldest prediction; ACT's ``decay`` 0.01 weights them almost equally, a larger one favours
older predictions, a negative one newer ones).

Latency compensation: when inference returns at ``now``, actions whose interval has already passed
(``t + dt <= now``) are dropped; the rest start where they were planned to, so the stream never
replays what the robot should already have done.

:class:`CommandStream` runs the planner thread around a :class:`~smiling_ros.control.loop.
ControlLoop` (watchdog, e-stop, validation and clamping stay there): a tick that does not command
(stale or invalid input, e-stop, policy error) clears the plan at once, and the loop's stop command
(``stop_action``) is handed to the next command tick; an input that goes stale or invalid between
two policy ticks is caught by the command tick itself (the plan is dropped and ``stop_action``
sent at once). Inference never runs on the command thread;
the command tick only takes a short lock to read the schedule.

Every command the stream sends passes ``envelope`` (a :class:`~smiling_ros.control.envelope.
SafetyEnvelope` for the command period: limits, rate limits per second, ramp-in after every
(re)start of commanding, distance from the measured position): a trajectory's points pass it in
their time order. Stop commands do not (stopping is never delayed).

Times are integers in nanoseconds of ``time.monotonic_ns``.
"""
from __future__ import annotations

import copy
import math
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from smiling_ros.control.realtime import background_priority
from smiling_ros.control.stats import DeadlineTracker, LatencyStats
from smiling_ros.errors import UserError

BLENDS = ("replace", "ensemble")


class ActionSchedule:
    """Planned actions on a time grid of ``step_ns`` (see the module docstring). Not thread-safe:
    :class:`CommandStream` guards it."""

    def __init__(self, act_dim: int, step_ns: int, blend: str = "replace", decay: float = 0.01):
        if blend not in BLENDS:
            raise UserError(f"chunk blend: 'replace' or 'ensemble', got '{blend}'")
        if not math.isfinite(decay):
            raise UserError(f"ensemble_decay: must be finite, got {decay}")
        self.act_dim, self.step_ns = int(act_dim), int(step_ns)
        self.blend, self.decay = blend, float(decay)
        self._epoch: Optional[int] = None
        # slot -> [weighted sum (act_dim,), weight sum, predictions]
        self._slots: dict[int, list[Any]] = {}
        self.dropped = 0  # planned actions dropped because their time had passed on arrival
        self.added = 0

    def clear(self) -> None:
        self._slots.clear()
        self._epoch = None

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, t_ns: int) -> int:
        return int(round((t_ns - self._origin()) / self.step_ns))

    def _origin(self) -> int:
        """The time of slot 0 (set by the first chunk added)."""
        if self._epoch is None:
            raise RuntimeError("action stream: no chunk added yet")
        return self._epoch

    def time_of(self, slot: int) -> int:
        return self._origin() + slot * self.step_ns

    def add(self, t0_ns: int, chunk: np.ndarray, now_ns: int) -> int:
        """Add the chunk planned for policy tick ``t0_ns`` (action k at ``t0 + k step``) as of
        ``now_ns``; returns how many of its actions were dropped as already past."""
        chunk = np.asarray(chunk, np.float64).reshape(-1, self.act_dim)
        if self._epoch is None:
            self._epoch = int(t0_ns)
        first = self._slot(t0_ns)
        dropped = 0
        kept = []
        for k in range(chunk.shape[0]):
            s = first + k
            if self.time_of(s) + self.step_ns <= now_ns:
                dropped += 1
                continue
            kept.append((s, chunk[k]))
        if kept and self.blend == "replace":
            start = kept[0][0]
            for s in [s for s in self._slots if s >= start]:
                del self._slots[s]
        for s, a in kept:
            slot = self._slots.get(s)
            if slot is None or self.blend == "replace":
                self._slots[s] = [a.copy(), 1.0, 1]
            else:
                w = math.exp(-self.decay * slot[2])
                slot[0] = slot[0] + w * a
                slot[1] += w
                slot[2] += 1
        # Forget what lies more than one step in the past.
        if self._slots:
            now_slot = math.floor((now_ns - self._epoch) / self.step_ns)
            for s in [s for s in self._slots if s < now_slot - 1]:
                del self._slots[s]
        self.dropped += dropped
        self.added += len(kept)
        return dropped

    def _value(self, s: int) -> np.ndarray:
        total, wsum, _ = self._slots[s]
        return total / wsum

    def sample(self, now_ns: int) -> Optional[np.ndarray]:
        """The action for ``now_ns`` (interpolated), or None when there is no plan for it."""
        if not self._slots:
            return None
        x = (now_ns - self._origin()) / self.step_ns
        i = math.floor(x)
        if i in self._slots:
            if i + 1 in self._slots:
                w = x - i
                return (1.0 - w) * self._value(i) + w * self._value(i + 1)
            return self._value(i)
        later = [s for s in self._slots if s > i]
        if later:
            return self._value(min(later))
        last = max(self._slots)
        if i <= last + 1:  # hold the last action for one more step while the next plan is computed
            return self._value(last)
        return None

    def points(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Planned actions whose interval has not ended, and their start times [s] relative to now."""
        slots = sorted(s for s in self._slots if self.time_of(s) + self.step_ns > now_ns)
        if not slots:
            return np.zeros((0, self.act_dim)), np.zeros(0)
        acts = np.stack([self._value(s) for s in slots])
        times = np.array([(self.time_of(s) - now_ns) / 1e9 for s in slots])
        return acts, times


class CommandStream:
    """Runs ``loop`` (a chunked :class:`ControlLoop`) on a planner thread at the policy rate and
    serves commands for the robot's rate from the schedule (see the module docstring).

    ``on_result(result)`` is called on the planner thread after every policy tick (for logging).
    """

    def __init__(self, loop: Any, blend: str = "replace", decay: float = 0.01,
                 on_result: Optional[Callable[[Any], None]] = None, command_period_ns: Optional[int] = None,
                 clock: Callable[[], int] = time.monotonic_ns, envelope: Optional[Any] = None):
        self.loop = loop
        self.step_ns = int(loop.period_ns)
        self.schedule = ActionSchedule(loop.act_dim, self.step_ns, blend, decay)
        self._lock = threading.Lock()
        self._stop_cmd: Optional[np.ndarray] = None
        self._on_result = on_result
        self._clock = clock
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self.inference = LatencyStats()  # policy tick durations (inference + checks) [ns]
        self.commands = DeadlineTracker(command_period_ns or self.step_ns)  # the command stream's ticks
        self.command_latency = LatencyStats()
        self.late_plans = 0  # policy ticks that started a full step late (slots skipped)
        self.exhausted = 0  # command ticks with no plan while commanding
        self.replace_next = False
        self.envelope = envelope
        self._restart = True  # the envelope ramps in at the next command
        self.refused = 0  # commands the envelope refused (non-finite measured position)
        self.input_stops = 0  # plans dropped by the command side because an input went bad

    # ---- the planner thread
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="policy-planner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.clear()

    def _run(self) -> None:
        background_priority()
        step = self.step_ns
        nxt = self._clock()
        while self._running:
            now = self._clock()
            if now < nxt:
                self._wake.wait((nxt - now) / 1e9)
                if not self._running:
                    return
                continue
            if now - nxt >= step:  # woke a whole step late: plan for the current grid time
                skipped = (now - nxt) // step
                self.late_plans += 1
                nxt += skipped * step
            self.plan_once(nxt)
            nxt += step

    def plan_once(self, t0_ns: int) -> Any:
        """One policy tick for grid time ``t0_ns`` (the planner thread calls it; tests may too)."""
        start = self._clock()
        r = self.loop.tick(start)
        done = self._clock()
        self.loop.record(t0_ns, start, done, r)  # the policy's own rate and deadlines
        with self._lock:
            if r.reason == "command" and getattr(self.loop, "estop", False):
                self.schedule.clear()  # e-stop engaged while this plan was computed
            elif r.reason == "command":
                chunk = r.chunk if r.chunk is not None else np.asarray(r.action)[None]
                if self.replace_next or (r.event and "swapped" in r.event):
                    self._replace_from(t0_ns)
                    self.replace_next = False
                self.schedule.add(t0_ns, chunk, done)
                self.inference.add(done - start)
            elif r.reason == "hold" and r.action is not None:
                self.schedule.add(t0_ns, np.asarray(r.action)[None], done)
            else:
                self.schedule.clear()
                self._restart = True
                if r.action is not None:  # the loop's one stop command
                    self._stop_cmd = np.asarray(r.action, np.float64)
        if self._on_result is not None:
            self._on_result(r)
        return r

    def _replace_from(self, t0_ns: int) -> None:
        """Drop the old plan from ``t0_ns`` on (a swapped policy's plan is not blended with it)."""
        sch = self.schedule
        if sch._epoch is None:
            return
        first = sch._slot(t0_ns)
        for s in [s for s in sch._slots if s >= first]:
            del sch._slots[s]

    # ---- the command side
    def clear(self) -> None:
        """Forget the plan (e-stop, deactivate): nothing is commanded until the next plan."""
        with self._lock:
            self.schedule.clear()
            self._restart = True

    def _guard(self, a: np.ndarray, now_ns: int) -> Optional[np.ndarray]:
        """``a`` through the envelope (None: refused)."""
        env = self.envelope
        if env is None:
            return a
        if self._restart:
            env.restart(now_ns)
            self._restart = False
        cmd = env.apply(a, now_ns, getattr(self.loop, "last_measured", None))
        if cmd is None:
            self.refused += 1
        return cmd

    def _guard_points(self, acts: np.ndarray, times: np.ndarray, now_ns: int) -> Optional[np.ndarray]:
        """A trajectory's actions through the envelope in time order: the one acting now commits
        the envelope's state, the later ones pass a copy at their times."""
        if self.envelope is None:
            return acts
        first = self._guard(acts[0], now_ns)
        if first is None:
            return None
        out = [first]
        ahead = copy.deepcopy(self.envelope)
        measured = getattr(self.loop, "last_measured", None)
        for a, t in zip(acts[1:], times[1:]):
            cmd = ahead.apply(a, now_ns + max(0, int(t * 1e9)), measured)
            if cmd is None:
                self.refused += 1
                return None
            out.append(cmd)
        return np.stack(out)

    def take_stop(self) -> Optional[np.ndarray]:
        with self._lock:
            stop, self._stop_cmd = self._stop_cmd, None
            return stop

    def _input_fault(self, now_ns: int) -> bool:
        """True when an observation field is stale, frozen or invalid now (checked at the command
        rate, so a plan is not followed past its inputs' freshness until the next policy tick)."""
        faults = getattr(self.loop.assembler, "faults", None)
        if faults is None or getattr(self.loop, "fault_action", "stop") == "hold":
            return False
        try:
            return bool(faults(now_ns))
        except (RuntimeError, ValueError, TypeError, IndexError):  # read while a message is applied
            return False

    def next_command(self, now_ns: int, points: bool = False) -> tuple[str, Any]:
        """What to send at ``now_ns``: ``("stop", action)`` (the loop's stop command, once),
        ``("command", action)`` or with ``points`` ``("command", (actions, times_s))``, or
        ``("none", None)``."""
        with self._lock:
            if self._stop_cmd is not None:
                stop, self._stop_cmd = self._stop_cmd, None
                return "stop", stop
            if len(self.schedule) and self._input_fault(now_ns):
                # An input went bad between two policy ticks: drop the plan and stop now; the
                # loop's own fault handling follows at its next tick.
                self.schedule.clear()
                self._restart = True
                self.input_stops += 1
                if getattr(self.loop, "stop_action", "none") == "zero":
                    return "stop", np.zeros(self.loop.act_dim, np.float64)
                return "none", None
            if points:
                acts, times = self.schedule.points(now_ns)
                if len(acts):
                    guarded = self._guard_points(acts, times, now_ns)
                    if guarded is not None:
                        return "command", (guarded, times)
                    return "none", None
            else:
                a = self.schedule.sample(now_ns)
                if a is not None:
                    cmd = self._guard(a, now_ns)
                    return ("command", cmd) if cmd is not None else ("none", None)
            if len(self.schedule):
                self.exhausted += 1
            return "none", None

    def record(self, expected_ns: int, start_ns: int, end_ns: int, commanded: bool) -> bool:
        if commanded:
            self.command_latency.add(end_ns - start_ns)
        return self.commands.observe(expected_ns, start_ns, end_ns)

    def reset_stats(self) -> None:
        self.inference.reset()
        self.commands.reset()
        self.command_latency.reset()
        self.late_plans = self.exhausted = 0
        self.schedule.dropped = self.schedule.added = 0

    def diagnostics(self) -> dict[str, Any]:
        d = self.commands
        return {
            "command_ticks": d.ticks,
            "command_rate_hz": d.achieved_rate_hz(),
            "command_missed": d.missed,
            "command_lateness_p99_ms": d.lateness.percentile_ms(99),
            "command_latency_p99_ms": self.command_latency.percentile_ms(99),
            "inference_p50_ms": self.inference.percentile_ms(50),
            "inference_p99_ms": self.inference.percentile_ms(99),
            "inference_max_ms": self.inference.max_ns / 1e6,
            "inference_total_ms": self.inference.total_ns / 1e6,
            "plans": self.inference.count,
            "command_latency_max_ms": self.command_latency.max_ns / 1e6,
            "planned_actions": self.schedule.added,
            "dropped_actions": self.schedule.dropped,
            "late_plans": self.late_plans,
            "plan_exhausted_ticks": self.exhausted,
            "stream_rate_limited": self.envelope.limited if self.envelope is not None else 0,
            "stream_refused": self.refused,
            "stream_input_stops": self.input_stops,
        }
