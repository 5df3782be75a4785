"""Checks that a policy fits the robot before it is deployed: sizes, bounds, the observation assembler."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from smiling_ros.config import Config
from smiling_ros.control.settings import ControllerSettings
from smiling_ros.errors import UserError


# --------------------------------------------------------------------------- policy checks
def expected_act_dim(cfg: Config) -> Optional[int]:
    """Action size the robot expects: from the config's limits, else the action fields' sizes."""
    if cfg.limits.action_low:
        return len(cfg.limits.action_low)
    from smiling_ros.io.fields import declared_size

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
        low_b, high_b = policy_bounds(policy)
        where = f"{path}: action bounds"
        if low_b is None or high_b is None:
            raise UserError(f"{cfg.path}: limits.action_low/action_high are empty and {path} carries no action "
                            "bounds; set the robot's command limits in the config")
        low, high = low_b, high_b
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise UserError(f"{path}: checkpoint for another robot: act_dim is {act_dim} but {where} have "
                        f"{low.shape[0]} elements")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise UserError(f"{where}: limits must be finite")
    if np.any(low > high):
        raise UserError(f"{where}: a lower limit is above its upper limit")
    return low, high


def make_assembler(specs: list[Any], obs_dim: int, max_abs: Optional[float] = None,
                   rates_hz: Optional[dict[str, float]] = None, period_s: Optional[float] = None,
                   stale_periods: float = 2.0, clock_tolerance_s: float = 0.5) -> Any:
    """The observation assembler for a policy taking ``obs_dim`` values.

    A field whose size the config leaves open (e.g. ``data`` of a Float64MultiArray) gets the size
    the policy needs when it is the only such field, so a message of another size is rejected on
    arrival (and the first message cannot fix a wrong size). Each field's maximum age: its
    ``max_age_s``, else ``stale_periods`` periods of its topic's rate in ``rates_hz`` (the
    training data's), but at least ``stale_periods`` periods of ``period_s`` (the control period).
    Raises :class:`UserError` when the declared sizes cannot add up to ``obs_dim`` or a field has
    no message type.
    """
    from smiling_ros.io.fields import VectorAssembler, declared_size

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
    return VectorAssembler(specs, max_abs=bound, rates_hz=rates_hz, period_s=period_s, stale_periods=stale_periods,
                           clock_tolerance_s=clock_tolerance_s)


# --------------------------------------------------------------------------- training spec vs robot
def training_spec(policy: Any) -> Optional[dict[str, Any]]:
    """What the policy was trained on (:func:`smiling_ros.learn.checkpoint.robot_spec`): the
    checkpoint's ``spec``, else derived from its embedded training config; None if it has neither."""
    from smiling_ros.learn.checkpoint import robot_spec

    meta = getattr(policy, "meta", None) or {}
    spec = meta.get("spec")
    if isinstance(spec, dict):
        return spec
    if isinstance(meta.get("config"), dict):
        return robot_spec(meta["config"])
    return None


def _norm_field(f: dict[str, Any]) -> dict[str, Any]:
    from smiling_ros.io.fields import normalize_msgtype

    out = {k: f.get(k) for k in ("topic", "field", "joints", "indices", "orientation")}
    out["type"] = normalize_msgtype(f.get("type") or "")
    out["orientation"] = out["orientation"] or "quat"
    out["field"] = out["field"] or "data"
    return out


def _joint_difference(kind: str, have: list[str], want: list[str]) -> str:
    if sorted(have) == sorted(want):
        return f"{kind} {want} in the checkpoint, {have} in the config (same joints, another order)"
    return f"{kind} {want} in the checkpoint, {have} in the config"


def check_spec(policy: Any, path: str, settings: Any) -> Optional[str]:
    """Refuse a policy trained on other inputs, outputs or rate than this robot's config gives.

    Compares the checkpoint's training spec with the robot config: the observation fields (topic,
    type, field, joint names in order, indices, orientation), the command joints in order and
    their meaning, and the training rate with ``control_rate_hz`` (differing by more than
    ``rate_tolerance`` is refused unless ``allow_rate_mismatch``). Raises :class:`UserError` with
    one line naming the difference; returns a note when the checkpoint carries no spec.
    """
    spec = training_spec(policy)
    cfg = settings.config
    where = cfg.path or "config"
    if spec is None:
        return (f"{path}: carries no training spec (observation fields, command joints, rate); only sizes "
                "were checked")
    trained = [_norm_field(f) for f in spec.get("observation") or [] if isinstance(f, dict)]
    robot = [_norm_field(dataclasses.asdict(f)) for f in cfg.observation]
    if trained and len(trained) != len(robot):
        raise UserError(f"{path}: trained on {len(trained)} observation fields, {where} lists {len(robot)}")
    for i, (t, r) in enumerate(zip(trained, robot)):
        for key in ("topic", "field", "type", "joints", "indices", "orientation"):
            tv, rv = t[key], r[key]
            if key == "type" and (not tv or not rv):
                continue
            if tv != rv:
                name = f"observation field {i} ({r['topic']}:{r['field']})"
                if key == "joints" and tv and rv:
                    raise UserError(f"{path}: {name}: " + _joint_difference("joints", rv, tv) + f" ({where})")
                raise UserError(f"{path}: {name}: {key} is {tv!r} in the checkpoint, {rv!r} in {where}")
    action = spec.get("action") or {}
    tj, rj = list(action.get("joints") or []), list(cfg.command.joints)
    if tj and rj and tj != rj:
        raise UserError(f"{path}: command " + _joint_difference("joints", rj, tj) + f" ({where}: command.joints)")
    tm, rm = action.get("meaning") or "", cfg.command.meaning
    if tm and rm and tm != rm:
        raise UserError(f"{path}: actions are {tm} commands in the checkpoint, {where} says command.meaning "
                        f"{rm!r}")
    rate = spec.get("rate_hz")
    if isinstance(rate, (int, float)) and rate > 0 and not settings.allow_rate_mismatch:
        control = float(settings.control_rate_hz)
        if abs(control / float(rate) - 1.0) > settings.rate_tolerance:
            raise UserError(f"{path}: trained at {float(rate):g} Hz, control_rate_hz is {control:g} Hz (more than "
                            f"rate_tolerance {settings.rate_tolerance:g} apart); run it at {float(rate):g} Hz or set "
                            "allow_rate_mismatch:=true")
    return None


def measured_positions(cfg: Config) -> Optional[np.ndarray]:
    """Indices into the observation vector of the measured positions of ``command.joints`` (from
    JointState ``position`` fields), or None when the observation lacks one of them."""
    from smiling_ros.io.fields import JOINT_STATE, declared_size, normalize_msgtype

    where: dict[str, int] = {}
    offset = 0
    for f in cfg.observation:
        n = declared_size(f)
        if normalize_msgtype(f.type) == JOINT_STATE and f.field == "position" and f.joints and f.indices is None:
            for k, joint in enumerate(f.joints):
                where.setdefault(joint, offset + k)
        if n is None:
            break
        offset += n
    joints = cfg.command.joints
    if not joints or any(j not in where for j in joints):
        return None
    return np.array([where[j] for j in joints], np.int64)


def make_envelope(settings: Any, low: np.ndarray, high: np.ndarray,
                  period_ns: Optional[int] = None) -> tuple[Any, Optional[np.ndarray]]:
    """The safety envelope of the config's ``controller`` section, and the observation indices of
    the measured positions it needs (position commands), refusing a config that cannot give them.
    ``period_ns``: the period of the commands it guards (default the control period)."""
    from smiling_ros.control.envelope import SafetyEnvelope

    cfg = settings.config
    position = cfg.command.meaning == "position"
    env = SafetyEnvelope(low, high, period_ns or settings.period_ns, max_rate=settings.max_rate, ramp_in_s=settings.ramp_in_s,
                         max_error=settings.max_position_error, position=position)
    index = measured_positions(cfg) if position else None
    if settings.max_position_error and not position:
        raise UserError(f"{cfg.path}: controller.max_position_error applies to position commands "
                        f"(command.meaning: position), not '{cfg.command.meaning or 'undeclared'}'")
    if env.needs_measured and index is None:
        raise UserError(f"{cfg.path}: position commands with a ramp, rate limit or max_position_error need "
                        "command.joints and a sensor_msgs/msg/JointState 'position' observation field listing "
                        "each of them")
    return env, index


def make_loop(settings: Any, policy: Any, chunked: bool = False) -> Any:
    """The control loop for ``policy`` on the robot of ``settings`` (assembler, limits, envelope);
    ``chunked``: the loop plans whole action chunks (see :class:`ControlLoop`)."""
    from smiling_ros.control.loop import ControlLoop

    spec = training_spec(policy) or {}
    rates = {k: float(v) for k, v in (spec.get("topic_rates_hz") or {}).items() if isinstance(v, (int, float))}
    s = settings
    assembler = make_assembler(s.config.observation, int(policy.obs_dim), s.observation_max_abs, rates_hz=rates,
                               period_s=s.period_ns / 1e9, stale_periods=s.watchdog_periods,
                               clock_tolerance_s=s.clock_tolerance_s)
    low, high = resolve_limits(s.config, policy, s.checkpoint)
    envelope, index = make_envelope(s, low, high)
    return ControlLoop(policy, assembler, low, high, s.period_ns, s.watchdog_periods, s.on_stale, s.stop_action,
                       policy_path=s.checkpoint, chunked=chunked, envelope=envelope, measured_index=index)


def load_controller_policy(path: str, settings: ControllerSettings, obs_dim: Optional[int]) -> Any:
    """Load a checkpoint for this robot, set its BRIDGER steps and run it once (warm-up).

    Raises :class:`UserError` for an unreadable checkpoint or one for another robot (sizes, and
    the training spec: :func:`check_spec`).
    """
    import torch

    from smiling_ros.learn.policy import load_policy

    if settings.device.startswith("cpu"):
        torch.set_num_threads(1)  # a small network is fastest on one thread, and leaves cores to the robot
    act_dim = expected_act_dim(settings.config) if settings.config is not None else None
    policy = load_policy(path, device=settings.device, obs_dim=obs_dim, act_dim=act_dim)
    check_policy(policy, path, obs_dim, act_dim)
    check_spec(policy, path, settings)
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


def resolve_command(cfg: Config, policy: Any, path: str, low: np.ndarray, high: np.ndarray, step_s: float,
                    topic: Optional[str] = None) -> Any:
    """The :class:`~smiling_ros.io.commands.CommandSpec` for deploying ``policy`` on this robot.

    The action's meaning comes from the checkpoint's action spec (else the config's
    ``command.meaning``) and must suit the config's ``command.interface``; a mismatch raises
    :class:`UserError` with one line naming the checkpoint or config key."""
    from smiling_ros.io.commands import CommandSpec, checkpoint_action_meaning

    meaning = checkpoint_action_meaning(getattr(policy, "meta", None))
    return CommandSpec.resolve(cfg, low, high, step_s, checkpoint_meaning=meaning, checkpoint=path, topic=topic)
