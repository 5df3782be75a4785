"""Controller settings: the robot config's ``controller:`` section and node parameters, merged and checked."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from smiling_ros.config import Config
from smiling_ros.errors import UserError

WATCHDOG_WAITING, WATCHDOG_OK, WATCHDOG_FAULT = "waiting", "ok", "fault"
ON_STALE = ("stop", "hold")
STOP_ACTIONS = ("zero", "hold", "none")
EXECUTORS = ("auto", "single", "events", "multi")


def _key(help: str, safety: bool = False) -> Any:
    """Metadata of a ControllerSection key: its description, and whether it is a safety setting
    (read from the robot config only, never from a node parameter)."""
    return {"help": help, "safety": safety}


# --------------------------------------------------------------------------- settings
@dataclass
class ControllerSection:
    """The ``controller`` section of a robot config.

    Safety settings (``safety`` in each key's metadata) come from the robot config only: a node
    parameter or a params file cannot change them. The others can be overridden by node
    parameters that the user sets; controller_node's parameter table is generated from this class.

    Fault policy: at every tick each observation field must be present, fresh (its newest
    sample at most its maximum age old: ``max_age_s`` of the field, else ``watchdog_periods``
    periods of its topic's rate in the training data, but at least ``watchdog_periods`` control
    periods), with an advancing stamp, finite and within ``observation_max_abs``, and the policy
    must return a finite action. Otherwise, at that tick: ``stop_action`` (``zero``: one all-zero
    command, then nothing; ``hold``: the last command again at every tick; ``none``: nothing).
    Commanding resumes, with a ramp-in, at the first tick where all of it holds again.
    """

    control_rate_hz: Optional[float] = field(default=None, metadata=_key(
        "control rate [Hz], > 0; unset: the config's rate_hz"))
    steps: Optional[int] = field(default=None, metadata=_key(
        "BRIDGER sampling steps per action, >= 1; unset: the checkpoint's default"))
    watchdog_periods: int = field(default=2, metadata=_key(
        "a field older than this many periods of its topic's training rate (and of the control period) is stale",
        safety=True))
    on_stale: str = field(default="stop", metadata=_key(
        "'stop' (stop_action) or 'hold' (the same as stop_action 'hold' for input faults)", safety=True))
    stop_action: str = field(default="zero", metadata=_key(
        "on a fault, e-stop or deactivate: 'zero' (one all-zero command: velocity/effort interfaces), "
        "'hold' (repeat the last command on faults; nothing on e-stop) or 'none'", safety=True))
    device: str = field(default="auto", metadata=_key("torch device: 'auto' (CUDA where present), 'cpu', 'cuda:N'"))
    executor: str = field(default="auto", metadata=_key(
        "'auto' (events where available), 'events' (rclpy EventsExecutor), 'single' or 'multi'"))
    follow_announcements: bool = field(default=True, metadata=_key("hot-swap to checkpoints announced on policy_topic"))
    diagnostics_period_s: float = field(default=1.0, metadata=_key("period of /diagnostics status [s]"))
    observation_max_abs: Optional[float] = field(default=None, metadata=_key(
        "an observation element beyond this magnitude is a fault; unset: the largest float32", safety=True))
    sched_priority: int = field(default=0, metadata=_key(
        "0: normal scheduling; 1..99: SCHED_FIFO priority of the control loop (Linux)"))
    max_rate: list[float] = field(default_factory=list, metadata=_key(
        "maximum change of each command element per second (one value or one per element); empty: none",
        safety=True))
    ramp_in_s: float = field(default=0.0, metadata=_key(
        "after activate, a fault's end or an e-stop release, commands ramp in from rest over this time [s]",
        safety=True))
    max_position_error: list[float] = field(default_factory=list, metadata=_key(
        "position commands: maximum distance from the measured position (one value or one per joint)",
        safety=True))
    rate_tolerance: float = field(default=0.05, metadata=_key(
        "refuse a checkpoint trained at a rate differing from control_rate_hz by more than this fraction",
        safety=True))
    allow_rate_mismatch: bool = field(default=False, metadata=_key(
        "run a checkpoint at a control rate other than its training rate"))
    clock_tolerance_s: float = field(default=0.5, metadata=_key(
        "a header stamp further than this from the receive time is a fault (clocks not synchronised)",
        safety=True))
    command_rate_hz: Optional[float] = field(default=None, metadata=_key(
        "robot command rate [Hz]; set: the policy plans chunks at control_rate_hz on its own thread and "
        "commands are streamed at this rate, interpolated between planned actions (smiling_ros.control.stream); "
        "unset: one command per policy step"))
    chunk_blend: str = field(default="replace", metadata=_key(
        "overlapping chunks: 'replace' (receding horizon) or 'ensemble' (ACT-style temporal ensembling)"))
    ensemble_decay: float = field(default=0.01, metadata=_key(
        "temporal ensembling weight exp(-decay * i) of the i-th prediction for a time (0 = oldest); 0.01 as in ACT"))
    max_checkpoint_mb: float = field(default=256.0, metadata=_key(
        "a checkpoint transferred over ROS larger than this is refused"))
    checkpoint_cache: str = field(default="", metadata=_key(
        "directory where transferred checkpoints are stored before loading; empty: "
        "~/.cache/smiling_ros/checkpoints"))

    def validate(self, where: str) -> None:
        check_settings(self, where)


def safety_keys() -> list[str]:
    """The ControllerSection keys that only the robot config may set."""
    return [f.name for f in dataclasses.fields(ControllerSection) if f.metadata.get("safety")]


def parameter_keys() -> list[str]:
    """The ControllerSection keys a node parameter may override."""
    return [f.name for f in dataclasses.fields(ControllerSection) if not f.metadata.get("safety")]


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
        raise UserError(f"{key('stop_action')}: 'zero', 'hold' or 'none', got '{s.stop_action}'")
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
    for name in ("max_rate", "max_position_error"):
        values = getattr(s, name)
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise UserError(f"{key(name)}: every value must be finite and > 0, got {values}")
    if not s.ramp_in_s >= 0:
        raise UserError(f"{key('ramp_in_s')}: must be >= 0 s, got {s.ramp_in_s}")
    if not s.rate_tolerance >= 0:
        raise UserError(f"{key('rate_tolerance')}: must be >= 0, got {s.rate_tolerance}")
    if not s.clock_tolerance_s > 0:
        raise UserError(f"{key('clock_tolerance_s')}: must be > 0 s, got {s.clock_tolerance_s}")


@dataclass
class ControllerSettings(ControllerSection):
    """Everything the node needs: the config's controller section with the user's node
    parameters over it, the config itself, the checkpoint and the topics."""

    config: Optional[Config] = None
    checkpoint: str = ""
    command_topic: str = ""
    policy_topic: str = ""
    episode_topic: str = ""

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))  # type: ignore[operator]

    @property
    def fault_action(self) -> str:
        """What an input fault does: ``stop_action``, or ``hold`` with ``on_stale: hold``."""
        return "hold" if self.on_stale == "hold" else self.stop_action


TOPIC_PARAMETERS = {
    "command_topic": "command topic; unset: config command.topic / topics.command",
    "policy_topic": "checkpoint announcements (std_msgs/String); unset: config topics.policy",
    "episode_topic": "episode markers (std_msgs/String JSON); unset: config topics.episode",
}


def resolve_settings(config: str, checkpoint: str, params: dict[str, Any]) -> ControllerSettings:
    """Load the config and merge node parameters over its ``controller`` section.

    ``params`` holds only the parameters the user set (unset ones are absent); keys are the
    non-safety :class:`ControllerSection` fields plus ``command_topic``, ``policy_topic`` and
    ``episode_topic``. A safety setting given as a parameter is refused: it lives in the robot
    config only. Raises :class:`UserError` with one line naming the parameter or config key at fault.
    """
    from smiling_ros.config import _coerce, load_config

    if not config:
        raise UserError("parameter 'config': required (a config file path or a shipped name such as 'arm_reach')")
    if not checkpoint:
        raise UserError("parameter 'checkpoint': required (path of a policy checkpoint, .safetensors)")
    cfg = load_config(config)
    section = cfg.section(ControllerSection, "controller")
    merged = dataclasses.asdict(section)
    hints = typing.get_type_hints(ControllerSection)
    safety = set(safety_keys())
    topics: dict[str, Any] = {"command_topic": cfg.command_topic, "policy_topic": cfg.topics.policy,
              "episode_topic": cfg.topics.episode}
    for key, value in params.items():
        if key in safety:
            raise UserError(f"parameter '{key}': a safety setting, read from the robot config only; set "
                            f"controller.{key} in {cfg.path}")
        if key in merged:
            merged[key] = _coerce(value, hints[key], f"parameter '{key}'")
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
