"""Checks that a policy fits the robot before it is deployed: sizes, bounds, the observation assembler."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from smiling_ros.config import Config
from smiling_ros.control.settings import ControllerSettings  # noqa
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
    return VectorAssembler(specs, max_abs=bound)


def load_controller_policy(path: str, settings: ControllerSettings, obs_dim: Optional[int]) -> Any:
    """Load a checkpoint for this robot, set its BRIDGER steps and run it once (warm-up).

    Raises :class:`UserError` for an unreadable checkpoint or one for another robot.
    """
    import torch

    from smiling_ros.learn.policy import load_policy

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


def resolve_command(cfg: Config, policy: Any, path: str, low: np.ndarray, high: np.ndarray, step_s: float,
                    topic: Optional[str] = None) -> Any:
    """The :class:`~smiling_ros.io.commands.CommandSpec` for deploying ``policy`` on this robot.

    The action's meaning comes from the checkpoint's action spec (else the config's
    ``command.meaning``) and must suit the config's ``command.interface``; a mismatch raises
    :class:`UserError` with one line naming the checkpoint or config key."""
    from smiling_ros.io.commands import CommandSpec, checkpoint_action_meaning

    meaning = checkpoint_action_meaning(getattr(policy, "meta", None))
    return CommandSpec.resolve(cfg, low, high, step_s, checkpoint_meaning=meaning, checkpoint=path, topic=topic)
