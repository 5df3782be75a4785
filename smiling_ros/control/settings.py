"""Controller settings: the robot config's ``controller:`` section and node parameters, merged and checked."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

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
    command_rate_hz: the robot's command rate [Hz] when it differs from the policy's: the policy
        then plans chunks at ``control_rate_hz`` on a thread of its own and the commands are
        streamed at this rate, interpolated between planned actions (smiling_ros.control.stream).
        None = one command per policy step (no stream).
    chunk_blend: overlapping chunks in the stream: ``replace`` (receding horizon) or ``ensemble``
        (ACT-style temporal ensembling).
    ensemble_decay: ensembling weight ``exp(-decay * i)`` of the i-th prediction for a time (0 =
        oldest); 0.01 as in ACT.
    max_checkpoint_mb: a checkpoint transferred over ROS larger than this is refused.
    checkpoint_cache: directory where transferred checkpoints are stored before loading; empty =
        ``~/.cache/smiling_ros/checkpoints``.
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
    command_rate_hz: Optional[float] = None
    chunk_blend: str = "replace"
    ensemble_decay: float = 0.01
    max_checkpoint_mb: float = 256.0
    checkpoint_cache: str = ""

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
    if s.command_rate_hz is not None:
        if not math.isfinite(s.command_rate_hz) or s.command_rate_hz <= 0 or s.command_rate_hz > 10000:
            raise UserError(f"{key('command_rate_hz')}: must be in (0, 10000] Hz, got {s.command_rate_hz}")
    if s.chunk_blend not in ("replace", "ensemble"):
        raise UserError(f"{key('chunk_blend')}: 'replace' or 'ensemble', got '{s.chunk_blend}'")
    if not math.isfinite(s.ensemble_decay):
        raise UserError(f"{key('ensemble_decay')}: must be finite, got {s.ensemble_decay}")
    if not (math.isfinite(s.max_checkpoint_mb) and s.max_checkpoint_mb > 0):
        raise UserError(f"{key('max_checkpoint_mb')}: must be > 0, got {s.max_checkpoint_mb}")
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
    command_rate_hz: Optional[float]
    chunk_blend: str
    ensemble_decay: float
    max_checkpoint_mb: float
    checkpoint_cache: str
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
    topics = {"command_topic": cfg.command_topic, "policy_topic": cfg.topics.policy,
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
    from smiling_ros.learn.device import select_device

    out.device = str(select_device(out.device))
    return out
