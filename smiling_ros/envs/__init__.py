"""MuJoCo tasks behind one interface: the project's own ``smiling_ros/ArmReach-v0`` and any
Gymnasium MuJoCo id (``Hopper-v5``, ``HalfCheetah-v5``, ``Walker2d-v5``, ...).

- ``make_env(env_id, seed=None, max_episode_steps=None, **kwargs)`` / ``make_env_from_config(cfg)``
- ``scripted_expert(env, seed)`` -> :class:`ScriptedExpert` or None; ``heuristic_controller(env)``
- ``passing_side(obs_seq)``: which side of the post an ArmReach trajectory passed
- ``joint_state(env)`` -> (names, position, velocity) of hinge/slide joints, for /joint_states

Importing this package registers ``ARM_REACH`` with Gymnasium.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium
import numpy as np

from smiling_ros.envs.arm_reach import (  # noqa: F401 - re-exported
    ACT_DIM,
    HORIZON,
    OBS_DIM,
    OBS_LAYOUT,
    POST_HALF,
    POST_XY,
    SUCCESS_DIST,
    ArmReachEnv,
)
from smiling_ros.envs.experts import ScriptedExpert, StraightLineController, passing_side
from smiling_ros.errors import UserError

ARM_REACH = "smiling_ros/ArmReach-v0"

if ARM_REACH not in gymnasium.registry:
    gymnasium.register(
        id=ARM_REACH,
        entry_point="smiling_ros.envs.arm_reach:ArmReachEnv",
        max_episode_steps=HORIZON,
    )

__all__ = [
    "ARM_REACH", "ArmReachEnv", "ScriptedExpert", "StraightLineController", "make_env",
    "make_env_from_config", "scripted_expert", "heuristic_controller", "passing_side", "joint_state",
    "is_arm_reach", "OBS_LAYOUT", "POST_XY", "POST_HALF", "SUCCESS_DIST",
]


def check_env_id(env_id: str, where: str = "task.env") -> None:
    """Refuse an environment id that would make Gymnasium import code: ``module:Env`` ids, and ids not
    registered (Gymnasium then imports a namespace's module to find them). Used for ids read from
    files the user did not name (a checkpoint's or dataset's embedded config)."""
    if not isinstance(env_id, str) or ":" in env_id or env_id not in gymnasium.registry:
        raise UserError(f"{where}: environment '{env_id}' is not a registered Gymnasium id; an id read from a "
                        "checkpoint or dataset is never imported (name the task in your own --config)")


def make_env(env_id: str, seed: Optional[int] = None, max_episode_steps: Optional[int] = None,
             allow_import: bool = True, **kwargs: Any) -> gymnasium.Env:
    """A Gymnasium env by id (the own task or any Gymnasium/MuJoCo id), with its TimeLimit.

    ``seed``: when given, the env is reset once with it (and its action space seeded), so later
    ``reset()`` calls continue a reproducible sequence. ``max_episode_steps`` overrides the
    registered horizon. ``kwargs`` go to the env's constructor. Unknown ids and bad keyword
    arguments raise :class:`UserError`. ``allow_import=False`` (an id from an untrusted file) accepts
    registered ids only (see :func:`check_env_id`).
    """
    if not env_id:
        raise UserError("no environment id given (task.env is empty)")
    if not allow_import:
        check_env_id(env_id)
    extra: dict[str, Any] = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    try:
        env = gymnasium.make(env_id, **extra, **kwargs)
    except gymnasium.error.Error as exc:  # NameNotFound, VersionNotFound, NamespaceNotFound, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"environment '{env_id}': {first}") from None
    except TypeError as exc:
        raise UserError(f"environment '{env_id}': bad env_kwargs ({exc})") from None
    except ModuleNotFoundError as exc:
        raise UserError(f"environment '{env_id}': needs the Python module '{exc.name}'") from None
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env


def make_env_from_config(cfg, seed: Optional[int] = None) -> gymnasium.Env:
    """``make_env`` from a :class:`~smiling_ros.config.Config`'s task section; ``seed`` defaults to
    ``cfg.seed``."""
    if not cfg.task.env:
        raise UserError(f"{cfg.path or 'config'}: task.env is empty (this config describes a robot without a simulator)")
    if not getattr(cfg, "trusted", False):
        check_env_id(cfg.task.env, f"{cfg.path or 'config'}: task.env")
    return make_env(cfg.task.env, seed=cfg.seed if seed is None else seed,
                    max_episode_steps=cfg.task.max_episode_steps, allow_import=getattr(cfg, "trusted", False),
                    **dict(cfg.task.env_kwargs))


def is_arm_reach(env: gymnasium.Env) -> bool:
    return isinstance(getattr(env, "unwrapped", env), ArmReachEnv)


def scripted_expert(env: gymnasium.Env, seed: Optional[int] = None) -> Optional[ScriptedExpert]:
    """The scripted expert for ``env``'s task, or None when the task has none (Gymnasium tasks)."""
    return ScriptedExpert(seed=seed) if is_arm_reach(env) else None


def heuristic_controller(env: gymnasium.Env) -> Optional[StraightLineController]:
    """A rule-based controller that ignores the obstacle (ArmReach), or None for other tasks."""
    return StraightLineController() if is_arm_reach(env) else None


def joint_state(env: gymnasium.Env) -> tuple[list[str], np.ndarray, np.ndarray]:
    """MuJoCo joint names, positions [rad or m] and velocities of the hinge and slide joints of
    ``env`` (any MuJoCo-based env with ``model``/``data``); free and ball joints are skipped."""
    base = getattr(env, "unwrapped", env)
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if model is None or data is None:
        spec = getattr(base, "spec", None)
        raise UserError(f"environment '{spec.id if spec is not None else base}': not a MuJoCo env (no model/data)")
    names, qadr, vadr = _joint_layout(model)
    return list(names), data.qpos[qadr].copy(), data.qvel[vadr].copy()


def _joint_layout(model) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names and qpos/qvel addresses of the hinge and slide joints of a MuJoCo model."""
    import mujoco

    keep = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    names, qadr, vadr = [], [], []
    for j in range(model.njnt):
        if int(model.jnt_type[j]) not in keep:
            continue
        names.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}")
        qadr.append(int(model.jnt_qposadr[j]))
        vadr.append(int(model.jnt_dofadr[j]))
    return names, np.asarray(qadr, dtype=np.int64), np.asarray(vadr, dtype=np.int64)
