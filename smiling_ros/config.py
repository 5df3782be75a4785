"""Experiment configuration: one YAML file per task/robot.

The file has fixed top-level sections (checked strictly: an unknown key or a wrong type is a
one-line error naming the file and the key). The other sections are registered in :data:`SECTIONS`
(``name -> "module:Dataclass"``; the methods' own in :data:`smiling_ros.methods.SECTIONS`): they are
kept as mappings here and parsed by their owner with :meth:`Config.section`, so each method's options
live next to its code and a new method adds one line to the registry, none here.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from smiling_ros.errors import UserError


# --------------------------------------------------------------------------- generic builder
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e9' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise UserError(f"{where}: must be finite, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        lo, hi = int_range(where)
        if not lo <= value < hi:
            raise UserError(f"{where}: must be >= {lo} and < {hi}, got {value}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


T = typing.TypeVar("T")

SEED_RANGE = (0, 2**32)  # numpy's and gymnasium's seeds
INT_RANGE = (-(2**63), 2**63)  # any other integer: it must fit the int64 it becomes in numpy/torch


def int_range(where: str) -> tuple[int, int]:
    """The accepted [lo, hi) of the integer at ``where``: seeds (a key ``seed`` or ``*_seed``) take
    numpy's range, every other integer int64's."""
    key = where.replace(":", ".").rsplit(".", 1)[-1].strip()
    return SEED_RANGE if key == "seed" or key.endswith("_seed") else INT_RANGE


# --------------------------------------------------------------------------- ROS names
TOPIC_MAX_LENGTH = 247  # rmw: RMW_TOPIC_MAX_NAME_LENGTH (255 minus the DDS prefix and suffix reserve)
NODE_NAME_MAX_LENGTH = 255  # rmw: RMW_NODE_NAME_MAX_NAME_LENGTH


def topic_name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a valid fully qualified ROS 2 topic name (rmw_validate_full_topic_name's
    rules), or None: non-empty, starts with '/', does not end with '/', only letters, digits, '_'
    and '/', no '//', no token starting with a digit, at most 247 characters."""
    if not isinstance(name, str) or not name:
        return "topic names must not be empty"
    if not name.startswith("/"):
        return "topic names must be absolute ('/...')"
    if name.endswith("/"):
        return "topic names must not end with '/'"
    for i, c in enumerate(name):
        if not (c.isascii() and (c.isalnum() or c in "_/")):
            return f"character {c!r} at position {i} is not allowed (letters, digits, '_' and '/' only)"
    if "//" in name:
        return "topic names must not contain '//'"
    for token in name.split("/")[1:]:
        if token[:1].isdigit():
            return f"token '{token}' must not start with a digit"
    if len(name) > TOPIC_MAX_LENGTH:
        return f"{len(name)} characters, more than the {TOPIC_MAX_LENGTH} allowed"
    return None


def node_name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a valid ROS 2 node name (rmw_validate_node_name's rules), or None."""
    if not isinstance(name, str) or not name:
        return "node names must not be empty"
    for i, c in enumerate(name):
        if not (c.isascii() and (c.isalnum() or c == "_")):
            return f"character {c!r} at position {i} is not allowed (letters, digits and '_' only)"
    if name[0].isdigit():
        return "node names must not start with a digit"
    if len(name) > NODE_NAME_MAX_LENGTH:
        return f"{len(name)} characters, more than the {NODE_NAME_MAX_LENGTH} allowed"
    return None


def check_topic(name: str, where: str) -> str:
    """``name`` if it is a valid absolute topic name, else a one-line error naming ``where``."""
    problem = topic_name_problem(name)
    if problem:
        raise UserError(f"{where}: invalid topic name {name!r}: {problem}")
    return name


def at(where: str, name: str) -> str:
    """The location of key ``name`` inside ``where``: ``"f.yaml: smiling" -> "f.yaml: smiling.T"``;
    a file's top level is written ``"f.yaml:"`` and gives ``"f.yaml: rate_hz"``."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


def _here(where: str) -> str:
    return where[:-1] if where.endswith(":") else where


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Unknown keys, missing required keys and wrong types raise :class:`UserError` naming
    ``where`` (e.g. ``"config/arm.yaml: smiling"``) and the key. After construction the
    dataclass's ``validate()`` method, if any, is called for range checks.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{_here(where)}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(n.rstrip("_") for n in fields))
        raise UserError(f"{_here(where)}: unknown key '{unknown[0]}' (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], at(where, name.rstrip("_")))  # import_ -> import
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{_here(where)}: missing required key '{name}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


def positive(value: float, where: str, name: str, allow_zero: bool = False) -> None:
    """Range check helper for ``validate`` methods."""
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{at(where, name)}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def one_of(value: Any, choices: Any, where: str, name: str) -> None:
    """Choice check helper for ``validate`` methods: ``'a' or 'b', got 'c'`` (or ``one of a, b, c``)."""
    choices = tuple(choices)
    if value not in choices:
        allowed = (" or ".join(f"'{c}'" for c in choices) if len(choices) <= 2
                   else "one of " + ", ".join(str(c) for c in choices))
        raise UserError(f"{at(where, name)}: {allowed}, got '{value}'")


# --------------------------------------------------------------------------- foundation sections
STAMP_SOURCES = ("header", "receive")
ALIGN_RULES = ("asof", "hold")


@dataclass
class FieldSpec:
    """One piece of the observation or action vector, taken from one topic.

    topic: ROS topic name. type: ROS message type (``std_msgs/msg/Float64MultiArray``,
    ``sensor_msgs/msg/JointState``, ``geometry_msgs/msg/PoseStamped``, ...); when empty the type
    recorded in the bag is used. field: attribute path inside the message (``data``,
    ``position``, ``velocity``, ``effort``, ``pose.position``, ``pose.orientation``, ...).
    joints: for JointState, the joint names to take, in this order (default: all, message order).
    indices: optional subset of elements. size: expected element count (checked).
    orientation: for quaternion fields, ``quat`` (w, x, y, z) or ``euler`` (roll, pitch, yaw).
    stamp: the time a sample counts from: ``header`` (the message's ``header.stamp`` where it has
    one and it is set, else the receive time) or ``receive`` (always the receive time; for a
    driver whose clock is not synchronised with this machine's).
    max_age_s: the oldest a sample of this field may be when it is used [s]; None = a few periods
    of the topic's rate in the training data (see :class:`smiling_ros.io.fields.VectorAssembler`).
    align: how the field is put on the dataset / control clock: ``asof`` (the latest sample no
    older than its maximum age; a step where it is older is dropped: import-bag leaves the row
    out and splits the episode there, the controller does not command) or ``hold`` (the latest
    sample whatever its age, e.g. a goal published once).
    """

    topic: str
    field: str = "data"
    type: str = ""
    joints: Optional[list[str]] = None
    indices: Optional[list[int]] = None
    size: Optional[int] = None
    orientation: str = "quat"
    stamp: str = "header"
    max_age_s: Optional[float] = None
    align: str = "asof"

    def validate(self, where: str) -> None:
        check_topic(self.topic, f"{where}.topic")
        if self.orientation not in ("quat", "euler"):
            raise UserError(f"{where}.orientation: 'quat' or 'euler', got '{self.orientation}'")
        if self.stamp not in STAMP_SOURCES:
            raise UserError(f"{where}.stamp: 'header' or 'receive', got '{self.stamp}'")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise UserError(f"{where}.max_age_s: must be > 0 s, got {self.max_age_s}")
        if self.align not in ALIGN_RULES:
            raise UserError(f"{where}.align: 'asof' or 'hold', got '{self.align}'")
        if self.align == "hold" and self.max_age_s is not None:
            raise UserError(f"{where}: 'max_age_s' has no effect with 'align: hold' (remove one)")


@dataclass
class TaskSection:
    """The environment: a Gymnasium id for MuJoCo, or empty for a real robot with no simulator."""

    env: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: Optional[int] = None

    def validate(self, where: str) -> None:
        if self.max_episode_steps is not None:
            positive(self.max_episode_steps, where, "max_episode_steps")


@dataclass
class TopicsSection:
    joint_states: str = "/joint_states"
    observation: str = "/observation"
    command: str = "/forward_command_controller/commands"
    episode: str = "/smiling_ros/episode"
    policy: str = "/smiling_ros/policy"

    def validate(self, where: str) -> None:
        for f in dataclasses.fields(self):
            check_topic(getattr(self, f.name), at(where, f.name))


@dataclass
class ImportSection:
    """How import-bag turns a bag into episodes (rules in order of preference: markers, command
    silence, idle, gaps; see smiling_ros/data/episodes.py).

    gap_s: a gap in the state stream longer than this [s] ends an episode (always applies).
    command_silence_s: no action message for longer than this [s] (and 5 median command periods)
    while the state stream goes on separates takes; 0 turns the rule off.
    idle_joints: joints whose speed tells whether the robot rests (empty: idle rule off);
    idle_topic: their JointState topic (empty: ``topics.joint_states``); idle_velocity: the speed
    below which a joint rests [rad/s or m/s; from ``velocity``, else from position differences];
    idle_s: how long all of them must rest to separate takes [s].
    max_episode_s: an episode longer than this [s] gets a warning (None: only when it is much
    longer than the others).
    stale_periods: an observation field (``align: asof``) without its own ``max_age_s`` may be
    this many periods of its topic's rate old (and at least this many dataset periods), as in
    the controller; a step where one is older is dropped and the episode split there.
    min_episode_steps: shorter fragments are dropped (and reported).
    max_abs: a value beyond +-max_abs is treated as corrupt (float32 keeps ~7 digits).
    """

    gap_s: float = 0.5
    command_silence_s: float = 0.5
    idle_joints: list[str] = field(default_factory=list)
    idle_topic: str = ""
    idle_velocity: float = 0.01
    idle_s: float = 1.0
    max_episode_s: Optional[float] = None
    stale_periods: float = 2.0
    min_episode_steps: int = 2
    max_abs: float = 1e9

    def validate(self, where: str) -> None:
        positive(self.gap_s, where, "gap_s")
        positive(self.command_silence_s, where, "command_silence_s", allow_zero=True)
        positive(self.idle_velocity, where, "idle_velocity")
        positive(self.idle_s, where, "idle_s")
        positive(self.stale_periods, where, "stale_periods")
        if self.max_episode_s is not None:
            positive(self.max_episode_s, where, "max_episode_s")
        if self.idle_topic:
            check_topic(self.idle_topic, at(where, "idle_topic"))
        if len(set(self.idle_joints)) != len(self.idle_joints):
            raise UserError(f"{at(where, 'idle_joints')}: a joint is listed twice")
        positive(self.min_episode_steps, where, "min_episode_steps")
        positive(self.max_abs, where, "max_abs")


@dataclass
class LimitsSection:
    """Command limits the controller clamps to (per action element; empty = from the env)."""

    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if len(self.action_low) != len(self.action_high):
            raise UserError(f"{where}: action_low and action_high differ in length")
        for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high)):
            if lo > hi:
                raise UserError(f"{where}: action_low[{i}]={lo} > action_high[{i}]={hi}")


@dataclass
class RecordSection:
    """Recording demonstrations (recorder_node; import-bag reads the joystick keys too).

    storage: ``mcap`` or ``sqlite3``. extra_topics: more topics to record.
    joy_topic: a sensor_msgs/Joy topic whose button marks takes (empty: none): ``joy_button``
    starts a take and, pressed again, ends it; ``joy_discard_button`` (-1: none) discards the
    open take. recorder_node turns presses into episode markers; import-bag reads the presses
    from a bag that has the Joy topic but no markers.
    """

    storage: str = "mcap"  # mcap | sqlite3
    extra_topics: list[str] = field(default_factory=list)
    joy_topic: str = ""
    joy_button: int = 0
    joy_discard_button: int = -1

    def validate(self, where: str) -> None:
        if self.storage not in ("mcap", "sqlite3"):
            raise UserError(f"{where}.storage: 'mcap' or 'sqlite3', got '{self.storage}'")
        for i, topic in enumerate(self.extra_topics):
            check_topic(topic, f"{at(where, 'extra_topics')}[{i}]")
        if self.joy_topic:
            check_topic(self.joy_topic, at(where, "joy_topic"))
        positive(self.joy_button, where, "joy_button", allow_zero=True)
        if self.joy_discard_button < -1:
            raise UserError(f"{at(where, 'joy_discard_button')}: a button index or -1 (none), "
                            f"got {self.joy_discard_button}")
        if self.joy_discard_button == self.joy_button:
            raise UserError(f"{at(where, 'joy_discard_button')}: must differ from joy_button ({self.joy_button})")


COMMAND_INTERFACES = ("forward", "joint_trajectory", "servo_twist")
ACTION_MEANINGS = ("", "position", "velocity", "effort", "twist")


@dataclass
class CommandSection:
    """How actions reach the robot (the ros2_control controller or MoveIt Servo).

    interface: ``forward`` (std_msgs/Float64MultiArray to a forward_command_controller),
    ``joint_trajectory`` (trajectory_msgs/JointTrajectory to a joint_trajectory_controller) or
    ``servo_twist`` (geometry_msgs/TwistStamped to MoveIt Servo).
    topic: the command topic; empty = ``topics.command``.
    joints: the controller's joints, in the controller's order (the action's element order).
    meaning: what an action element is (``position`` [rad or m], ``velocity`` [rad/s or m/s],
    ``effort`` [N m or N], ``twist``); empty = not declared. Recorded in datasets and checkpoints.
    frame_id: the frame of a Servo twist.
    scale: the controller's (SI) units per action unit, one number or one per action element
    (e.g. 1.5 for velocities given as fractions of 1.5 rad/s); empty = 1. Trajectories and twists
    are sent in SI units; forward commands in action units.
    """

    interface: str = "forward"
    topic: str = ""
    joints: list[str] = field(default_factory=list)
    meaning: str = ""
    frame_id: str = ""
    scale: list[float] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if self.interface not in COMMAND_INTERFACES:
            raise UserError(f"{where}.interface: one of {', '.join(COMMAND_INTERFACES)}, got '{self.interface}'")
        if self.topic:
            check_topic(self.topic, f"{where}.topic")
        if self.meaning not in ACTION_MEANINGS:
            raise UserError(f"{where}.meaning: one of {', '.join(m for m in ACTION_MEANINGS if m)}, "
                            f"got '{self.meaning}'")
        if len(set(self.joints)) != len(self.joints):
            raise UserError(f"{where}.joints: a joint is listed twice")
        if any(not v > 0 for v in self.scale):
            raise UserError(f"{where}.scale: must be > 0, got {self.scale}")


SECTIONS: dict[str, str] = {"controller": "smiling_ros.control.settings:ControllerSection"}
"""Registered sections besides the methods': name -> ``"module:Dataclass"`` (imported on use)."""


def registered_sections() -> dict[str, str]:
    """Every registered section: :data:`SECTIONS` and :data:`smiling_ros.methods.SECTIONS`."""
    from smiling_ros.methods import SECTIONS as METHODS

    return {**METHODS, **SECTIONS}


def section_class(name: str) -> Any:
    """The dataclass registered for section ``name``."""
    import importlib

    mod, _, cls = registered_sections()[name].partition(":")
    return getattr(importlib.import_module(mod), cls)


@dataclass
class Config:
    """A task/robot configuration file (see config/arm_reach.yaml for a commented example)."""

    task: TaskSection = field(default_factory=TaskSection)
    rate_hz: float = 20.0
    topics: TopicsSection = field(default_factory=TopicsSection)
    observation: list[FieldSpec] = field(default_factory=list)
    action: list[FieldSpec] = field(default_factory=list)
    import_: ImportSection = field(default_factory=ImportSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    record: RecordSection = field(default_factory=RecordSection)
    command: CommandSection = field(default_factory=CommandSection)
    seed: int = 0
    path: str = field(default="", metadata={"internal": True})  # file it was read from (set by load_config)
    # True only for a file the user named (load_config): what a config embedded in a checkpoint or
    # dataset names (e.g. a 'module:Env' id) is never imported.
    trusted: bool = field(default=False, metadata={"internal": True})
    # Registered sections (registered_sections()) as read, parsed by their owners with section(...).
    sections: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def __getattr__(self, name: str) -> Any:
        """``cfg.smiling`` etc.: the mapping of a registered section ({} when the file has none)."""
        if name != "sections" and name in registered_sections():
            return self.__dict__.setdefault("sections", {}).setdefault(name, {})
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "sections" and name in registered_sections():
            self.__dict__.setdefault("sections", {})[name] = value
        else:
            object.__setattr__(self, name, value)

    def with_section(self, name: str, data: dict[str, Any]) -> "Config":
        """A copy with section ``name`` replaced by ``data``."""
        return dataclasses.replace(self, sections={**self.sections, name: dict(data)})

    def validate(self, where: str) -> None:
        positive(self.rate_hz, where, "rate_hz")
        positive(self.seed, where, "seed", allow_zero=True)
        if not self.observation:
            raise UserError(f"{_here(where)}: 'observation' must list at least one field")

    @property
    def command_topic(self) -> str:
        """The topic commands are published on: ``command.topic``, else ``topics.command``."""
        return self.command.topic or self.topics.command

    def section(self, cls: type[T], name: str) -> T:
        """Parse registered section ``name`` into dataclass ``cls`` (strict, errors name the file)."""
        return build(cls, self.sections.get(name, {}), f"{self.path or 'config'}: {name}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["import"] = d.pop("import_")
        d.pop("path", None)
        d.pop("trusted", None)
        sections = d.pop("sections", {})
        for name in registered_sections():
            d[name] = sections.get(name, {})
        return d


def config_from_dict(data: Any, where: str = "config") -> Config:
    """Check a parsed config; errors name ``where`` (the file) and the key."""
    if data is None:
        raise UserError(f"{where}: empty config file (expected a mapping with task, rate_hz, observation, ...)")
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a YAML mapping at top level, got {type(data).__name__}")
    data = dict(data)
    registered = registered_sections()
    for internal in ("import_", "path", "trusted", "sections"):
        if internal in data:
            known = ", ".join(sorted([f.name.rstrip("_") for f in dataclasses.fields(Config)
                                      if not f.metadata.get("internal")] + list(registered)))
            raise UserError(f"{where}: unknown key '{internal}' (known: {known})")
    if "import" in data:
        data["import_"] = data.pop("import")
    sections = {}
    for name in registered:
        if name in data:
            value = data.pop(name)
            sections[name] = _coerce({} if value is None else value, dict[str, Any], f"{where}: {name}")
    try:
        cfg = build(Config, data, f"{where}:")
    except UserError as exc:
        if str(exc).startswith(f"{where}: unknown key '") and "(known: " in str(exc):  # list the sections too
            text = str(exc)
            head, _, known = text.partition("(known: ")
            names = sorted(set(known.rstrip(")").split(", ")) | set(registered))
            raise UserError(f"{head}(known: {', '.join(names)})") from None
        raise
    cfg.sections = sections
    cfg.path = where
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and check a config file. Names shipped with the package (``arm_reach``) also resolve."""
    from smiling_ros.io.inputs import parse_yaml, read_bytes

    p = resolve_config_path(path)
    data = read_bytes(p, "config", MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not valid YAML (not UTF-8 text: byte {exc.start})") from None
    cfg = config_from_dict(parse_yaml(text, str(p), max_bytes=MAX_CONFIG_BYTES), str(p))
    cfg.trusted = True
    return cfg


MAX_CONFIG_BYTES = 16 * 1024 * 1024


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a config shipped in config/ (with or without .yaml)."""
    if str(path) == "":
        raise UserError("--config: empty path")
    p = Path(path)
    if os.path.lexists(p):
        return p
    from smiling_ros.paths import share_dir

    for cand in (share_dir("config") / p.name, share_dir("config") / f"{p.name}.yaml"):
        if cand.exists():
            return cand
    raise UserError(f"{path}: config file not found")
