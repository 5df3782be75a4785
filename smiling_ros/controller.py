"""The control loop behind ``controller_node``, free of ROS so it can be tested without it.

One :class:`ControlLoop` owns a policy, the observation assembler (the same field mapping
import-bag uses, :class:`smiling_ros.adapters.fields.VectorAssembler`), the action limits, the
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

import dataclasses
import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from smiling_ros.config import Config
from smiling_ros.errors import UserError

WATCHDOG_WAITING, WATCHDOG_OK, WATCHDOG_STALE = "waiting", "ok", "stale"
ON_STALE = ("stop", "hold")
STOP_ACTIONS = ("zero", "none")
EXECUTORS = ("auto", "single", "events", "multi")


# --------------------------------------------------------------------------- settings
@dataclass
class ControllerSection:
    """The ``controller`` section of a task config; each key can be overridden by a node parameter.

    control_rate_hz: timer rate [Hz]; None = the config's ``rate_hz``.
    steps: BRIDGER sampling steps per action; None = the checkpoint's default (ignored by
        checkpoints without steps, e.g. ``mlp_policy``).
    watchdog_periods: an observation older than this many control periods is stale.
    on_stale: ``stop`` (publish nothing) or ``hold`` (republish the last command).
    stop_action: ``zero`` (one all-zero command when stopping) or ``none`` (see module doc).
    device: torch device for inference, ``auto`` = CUDA where present.
    executor: ROS executor: ``events`` (rclpy's EventsExecutor, ROS 2 Kilted and later: the
        lowest overhead, measured in bench/closed_loop), ``single`` (SingleThreadedExecutor),
        ``multi`` (MultiThreadedExecutor, control timer in its own callback group) or ``auto``
        (events where rclpy has it, else single).
    follow_announcements: load checkpoints announced on ``topics.policy`` (hot swap).
    diagnostics_period_s: period of the /diagnostics status [s].
    observation_max_abs: an observation element beyond this magnitude is treated like NaN (no
        command); None = no bound.
    sched_priority: 0 = normal scheduling; 1..99 = Linux SCHED_FIFO real-time priority for the
        control thread and the executor's threads (needs CAP_SYS_NICE or an rtprio limit; if
        refused, a warning and normal scheduling). Checkpoint loading for hot swaps runs one
        priority below.
    """

    control_rate_hz: Optional[float] = None
    steps: Optional[int] = None
    watchdog_periods: int = 2
    on_stale: str = "stop"
    stop_action: str = "zero"
    device: str = "auto"
    executor: str = "auto"
    follow_announcements: bool = True
    diagnostics_period_s: float = 1.0
    observation_max_abs: Optional[float] = None
    sched_priority: int = 0

    def validate(self, where: str) -> None:
        check_settings(self, where)


def check_settings(s: Any, where: str) -> None:
    """Range checks shared by the config section and the resolved node settings.

    ``where`` is ``"<file>: controller"`` for the config section or ``"parameter"`` for node
    parameters (messages then read ``parameter 'name': ...``).
    """
    def key(name: str) -> str:
        return f"parameter '{name}'" if where == "parameter" else f"{where}.{name}"

    if s.control_rate_hz is not None:
        if not math.isfinite(s.control_rate_hz) or s.control_rate_hz <= 0:
            raise UserError(f"{key('control_rate_hz')}: must be > 0 Hz, got {s.control_rate_hz}")
        if s.control_rate_hz > 10000:
            raise UserError(f"{key('control_rate_hz')}: {s.control_rate_hz} Hz is above the 10 kHz this node supports")
    if s.steps is not None and s.steps < 1:
        raise UserError(f"{key('steps')}: must be >= 1, got {s.steps}")
    if s.watchdog_periods < 1:
        raise UserError(f"{key('watchdog_periods')}: must be >= 1, got {s.watchdog_periods}")
    if s.on_stale not in ON_STALE:
        raise UserError(f"{key('on_stale')}: 'stop' or 'hold', got '{s.on_stale}'")
    if s.stop_action not in STOP_ACTIONS:
        raise UserError(f"{key('stop_action')}: 'zero' or 'none', got '{s.stop_action}'")
    if s.executor not in EXECUTORS:
        raise UserError(f"{key('executor')}: one of {', '.join(EXECUTORS)}, got '{s.executor}'")
    if not s.diagnostics_period_s > 0:
        raise UserError(f"{key('diagnostics_period_s')}: must be > 0, got {s.diagnostics_period_s}")
    if not 0 <= s.sched_priority <= 99:
        raise UserError(f"{key('sched_priority')}: 0 (normal) or a SCHED_FIFO priority 1..99, got {s.sched_priority}")
    if s.observation_max_abs is not None and not s.observation_max_abs > 0:
        raise UserError(f"{key('observation_max_abs')}: must be > 0, got {s.observation_max_abs}")


@dataclass
class ControllerSettings:
    """Everything the node needs, resolved from config section + node parameters."""

    config: Config
    checkpoint: str
    control_rate_hz: float
    steps: Optional[int]
    watchdog_periods: int
    on_stale: str
    stop_action: str
    device: str
    executor: str
    follow_announcements: bool
    diagnostics_period_s: float
    observation_max_abs: Optional[float]
    sched_priority: int
    command_topic: str
    policy_topic: str
    episode_topic: str

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))


def resolve_settings(config: str, checkpoint: str, params: dict[str, Any]) -> ControllerSettings:
    """Load the config and merge node parameters over its ``controller`` section.

    ``params`` holds only the parameters the user set (unset ones are absent); keys are the
    :class:`ControllerSection` fields plus ``command_topic``, ``policy_topic`` and ``episode_topic``. Raises
    :class:`UserError` with one line naming the parameter or config key at fault.
    """
    from smiling_ros.config import load_config

    if not config:
        raise UserError("parameter 'config': required (a config file path or a shipped name such as 'arm_reach')")
    if not checkpoint:
        raise UserError("parameter 'checkpoint': required (path of a policy checkpoint, .safetensors)")
    cfg = load_config(config)
    section = cfg.section(ControllerSection, "controller")
    merged = dataclasses.asdict(section)
    topics = {"command_topic": cfg.topics.command, "policy_topic": cfg.topics.policy,
              "episode_topic": cfg.topics.episode}
    for key, value in params.items():
        if key in merged:
            merged[key] = value
        elif key in topics:
            if not isinstance(value, str) or not value.startswith("/"):
                raise UserError(f"parameter '{key}': topic names must be absolute ('/...'), got '{value}'")
            topics[key] = value
        else:
            raise UserError(f"parameter '{key}': unknown")
    if merged["control_rate_hz"] is None:
        merged["control_rate_hz"] = cfg.rate_hz
    out = ControllerSettings(config=cfg, checkpoint=str(checkpoint), **merged, **topics)
    check_settings(out, "parameter")
    from smiling_ros.device import select_device

    out.device = str(select_device(out.device))
    return out


# --------------------------------------------------------------------------- policy checks
def expected_act_dim(cfg: Config) -> Optional[int]:
    """Action size the robot expects: from the config's limits, else the action fields' sizes."""
    if cfg.limits.action_low:
        return len(cfg.limits.action_low)
    from smiling_ros.adapters.fields import declared_size

    sizes = [declared_size(s) for s in cfg.action]
    if cfg.action and all(v is not None for v in sizes):
        return int(sum(sizes))  # type: ignore[arg-type]
    return None


def check_policy(policy: Any, path: str, obs_dim: Optional[int], act_dim: Optional[int]) -> None:
    """Refuse a policy whose dimensions differ from what this robot's config produces/expects."""
    for name, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        have = getattr(policy, name, None)
        if want is not None and have is not None and int(have) != int(want):
            what = "observation fields" if name == "obs_dim" else "action limits/fields"
            raise UserError(f"{path}: checkpoint for another robot: {name} is {have} but the config's "
                            f"{what} give {want}")


def policy_bounds(policy: Any) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The action bounds a checkpoint carries (``low``/``high`` or meta ``action_low/high``)."""
    low, high = getattr(policy, "low", None), getattr(policy, "high", None)
    if low is None or high is None:
        meta = getattr(policy, "meta", None) or {}
        low, high = meta.get("action_low"), meta.get("action_high")
    if low is None or high is None:
        return None, None
    return np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)


def resolve_limits(cfg: Config, policy: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Command limits: the config's ``limits`` (the robot's), else the checkpoint's action bounds."""
    act_dim = int(policy.act_dim)
    if cfg.limits.action_low:
        low = np.asarray(cfg.limits.action_low, np.float64)
        high = np.asarray(cfg.limits.action_high, np.float64)
        where = f"{cfg.path}: limits"
    else:
        low, high = policy_bounds(policy)
        where = f"{path}: action bounds"
        if low is None:
            raise UserError(f"{cfg.path}: limits.action_low/action_high are empty and {path} carries no action "
                            "bounds; set the robot's command limits in the config")
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise UserError(f"{path}: checkpoint for another robot: act_dim is {act_dim} but {where} have "
                        f"{low.shape[0]} elements")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise UserError(f"{where}: limits must be finite")
    if np.any(low > high):
        raise UserError(f"{where}: a lower limit is above its upper limit")
    return low, high


def make_assembler(specs: list[Any], obs_dim: int, max_abs: Optional[float] = None) -> Any:
    """The observation assembler for a policy taking ``obs_dim`` values.

    A field whose size the config leaves open (e.g. ``data`` of a Float64MultiArray) gets the size
    the policy needs when it is the only such field, so a message of another size is rejected on
    arrival (and the first message cannot fix a wrong size). Raises :class:`UserError` when the
    declared sizes cannot add up to ``obs_dim`` or a field has no message type.
    """
    from smiling_ros.adapters.fields import VectorAssembler, declared_size

    specs = list(specs)
    for s in specs:
        if not s.type:
            raise UserError(f"observation field on topic '{s.topic}': 'type' is required by the controller "
                            "(it subscribes to that type), e.g. std_msgs/msg/Float64MultiArray")
    sizes = [declared_size(s) for s in specs]
    unknown = [i for i, n in enumerate(sizes) if n is None]
    known = sum(n for n in sizes if n is not None)
    if not unknown and known != obs_dim or unknown and known >= obs_dim:
        raise UserError(f"checkpoint for another robot: obs_dim is {obs_dim} but the config's observation fields "
                        f"give {known}{'+' if unknown else ''}")
    if len(unknown) == 1:
        specs[unknown[0]] = dataclasses.replace(specs[unknown[0]], size=obs_dim - known)
    # Default bound: the largest float32 (policies run in float32), so inf and values that would
    # overflow to inf are rejected as well as NaN.
    f32_max = float(np.finfo(np.float32).max)
    bound = f32_max if max_abs is None else min(float(max_abs), f32_max)
    return VectorAssembler(specs, max_abs=bound)


def load_controller_policy(path: str, settings: ControllerSettings, obs_dim: Optional[int]) -> Any:
    """Load a checkpoint for this robot, set its BRIDGER steps and run it once (warm-up).

    Raises :class:`UserError` for an unreadable checkpoint or one for another robot.
    """
    import torch

    from smiling_ros.policy import load_policy

    if settings.device.startswith("cpu"):
        torch.set_num_threads(1)  # a small network is fastest on one thread, and leaves cores to the robot
    act_dim = expected_act_dim(settings.config)
    policy = load_policy(path, device=settings.device, obs_dim=obs_dim, act_dim=act_dim)
    check_policy(policy, path, obs_dim, act_dim)
    if settings.steps is not None and hasattr(policy, "steps"):
        policy.steps = int(settings.steps)
    policy.reset()
    try:
        with torch.inference_mode():
            policy.act(np.zeros(int(policy.obs_dim), np.float32))  # first call allocates; keep it off the loop
    except Exception as exc:  # noqa: BLE001 - a policy that cannot act is refused, whatever the reason
        raise UserError(f"{path}: policy fails on a test observation ({type(exc).__name__}: {exc})") from None
    policy.reset()
    return policy


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


class ControlLoop:
    """Observation -> policy -> clamp, with the watchdog, e-stop and the statistics.

    Thread-safety: ``tick``, ``on_message``, ``set_estop`` and ``stop_command`` may be called from
    different threads (one lock, held briefly; the policy runs under it, so a swap offered with
    :meth:`offer_policy` takes effect between two ticks).
    """

    def __init__(self, policy: Any, assembler: Any, low: np.ndarray, high: np.ndarray, period_ns: int,
                 watchdog_periods: int = 2, on_stale: str = "stop", stop_action: str = "zero",
                 policy_path: str = ""):
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
    def on_message(self, topic: str, msg: Any, now_ns: int) -> Optional[str]:
        """Feed one received message; returns a warning line if it was rejected."""
        try:
            with self._lock:
                self.assembler.update(topic, msg, now_ns)
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
        try:
            with self._torch():
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
        self.last_action = clipped
        self._stopped = False
        self._invalid_since = None
        return TickResult(clipped.copy(), "command", event=event)

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


def _torch_inference_mode() -> Callable[[], Any]:
    try:
        import torch

        return torch.inference_mode
    except ImportError:  # pragma: no cover - torch is a dependency
        import contextlib

        return contextlib.nullcontext


# --------------------------------------------------------------------------- scheduling
def set_sched_priority(priority: int) -> Optional[str]:
    """Run the calling thread (and threads it starts later) under SCHED_FIFO at ``priority``
    (1..99), or back under normal scheduling with 0. Returns a warning line if refused."""
    import os

    if not hasattr(os, "sched_setscheduler"):
        return "sched_priority: real-time scheduling is not available on this system; running normally"
    try:
        if priority > 0:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
        elif os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, OSError) as exc:
        return (f"sched_priority {priority}: refused by the system ({exc.strerror or exc}); running with normal "
                "scheduling (grant CAP_SYS_NICE or an rtprio limit)")
    return None


def background_priority() -> None:
    """For a helper thread of a SCHED_FIFO control loop: one FIFO priority below it.

    Still above every normally scheduled process, so the helper is not preempted by them while it
    holds Python's GIL (which would leave the control thread waiting: priority inversion), yet
    the kernel runs the control thread first whenever both are ready."""
    import os

    if not hasattr(os, "sched_getscheduler"):
        return
    try:
        if os.sched_getscheduler(0) == os.SCHED_FIFO:
            prio = os.sched_getparam(0).sched_priority
            if prio > 1:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio - 1))
    except OSError:
        pass


# --------------------------------------------------------------------------- background loading
class PolicyLoader:
    """Loads announced checkpoints on a background thread; the newest request wins.

    ``load(path) -> policy`` may raise :class:`UserError` (reported through ``on_error``);
    ``on_loaded(policy, path)`` receives each loaded policy.
    """

    def __init__(self, load: Callable[[str], Any], on_loaded: Callable[[Any, str], None],
                 on_error: Callable[[str, str], None]):
        self._load, self._on_loaded, self._on_error = load, on_loaded, on_error
        self._cv = threading.Condition()
        self._pending: Optional[str] = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="policy-loader", daemon=True)
        self._thread.start()

    def request(self, path: str) -> None:
        with self._cv:
            self._pending = path
            self._cv.notify()

    def idle(self) -> bool:
        with self._cv:
            return self._pending is None and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        background_priority()
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                path, self._pending = self._pending, None
                self._busy = True
            try:
                policy = self._load(path)
            except UserError as exc:
                self._on_error(path, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad file must not kill the loader
                self._on_error(path, f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            else:
                self._on_loaded(policy, path)
            finally:
                with self._cv:
                    self._busy = False
