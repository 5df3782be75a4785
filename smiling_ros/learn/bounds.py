"""Action bounds: the one resolver every trainer uses, and the one map between robot units and [-1, 1]."""
from __future__ import annotations

from typing import Any, Optional, TypeVar

import numpy as np
import torch

from smiling_ros.errors import UserError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def check_bounds(low: Any, high: Any, dim: int, where: str, what: str = "actions") -> tuple[np.ndarray, np.ndarray]:
    """``low``/``high`` as float32 arrays of ``dim`` finite numbers with low <= high, else one line
    naming ``where``."""
    lo, hi = np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)
    if lo.shape != (dim,) or hi.shape != (dim,):
        raise UserError(f"{where}: {lo.shape[0]} elements, but the {what} have {dim}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise UserError(f"{where}: limits must be finite")
    if (lo > hi).any():
        raise UserError(f"{where}: a lower limit is above its upper limit")
    return lo.astype(np.float32), hi.astype(np.float32)


def action_bounds(cfg: Optional[Any], dataset: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Action limits in robot units, (act_dim,) each, and where they came from.

    In order of preference: the config's ``limits`` (the robot's), the dataset's recorded
    ``action_low``/``action_high``, the config's simulator action space, and finally the range seen
    in the data widened by 5% (a robot with neither a simulator nor configured limits)."""
    act = dataset.require_actions("action bounds")
    dim = int(act.shape[1])
    where = (getattr(cfg, "path", "") or "config") if cfg is not None else "config"
    if cfg is not None and cfg.limits.action_low:
        low, high = check_bounds(cfg.limits.action_low, cfg.limits.action_high, dim, f"{where}: limits.action_low",
                                 "dataset's actions")
        return low, high, "config limits"
    m = dataset.meta
    if "action_low" in m and "action_high" in m and len(m["action_low"]) == dim:
        low, high = check_bounds(m["action_low"], m["action_high"], dim, f"{m.get('path', 'dataset')}: action_low")
        return low, high, "dataset"
    if cfg is not None and cfg.task.env:
        space = env_action_space(cfg)
        if space is not None:
            if space.shape != (dim,):
                raise UserError(f"{where}: task.env '{cfg.task.env}' has actions of shape {space.shape} but the "
                                f"dataset {m.get('path', '')} has ({dim},) (dataset of another task?)")
            return space.low.astype(np.float32), space.high.astype(np.float32), f"env {cfg.task.env}"
    lo, hi = act.min(0), act.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-3)
    return (lo - pad).astype(np.float32), (hi + pad).astype(np.float32), "dataset range (+5%)"


def env_action_space(cfg: Any) -> Any:
    """The Box action space of the config's simulator, or None if it cannot be built here."""
    try:
        from smiling_ros.envs import make_env_from_config

        env = make_env_from_config(cfg)
    except Exception:  # noqa: BLE001 - an env that cannot be built here just gives no bounds
        return None
    try:
        return env.action_space
    finally:
        env.close()


def to_unit(a: ArrayT, low: Any, high: Any) -> ArrayT:
    """Robot units -> [-1, 1] (clipped)."""
    if isinstance(a, torch.Tensor):
        lo, hi = torch.as_tensor(low, device=a.device, dtype=a.dtype), torch.as_tensor(high, device=a.device, dtype=a.dtype)
        return (2 * (a - lo) / (hi - lo) - 1).clamp(-1, 1)
    lo_n, hi_n = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return np.clip(2 * (np.asarray(a, np.float32) - lo_n) / (hi_n - lo_n) - 1, -1, 1).astype(np.float32)


def from_unit(u: ArrayT, low: Any, high: Any) -> ArrayT:
    """[-1, 1] -> robot units."""
    if isinstance(u, torch.Tensor):
        lo, hi = torch.as_tensor(low, device=u.device, dtype=u.dtype), torch.as_tensor(high, device=u.device, dtype=u.dtype)
        return lo + (u + 1) * 0.5 * (hi - lo)
    lo_n, hi_n = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return (lo_n + (np.asarray(u, np.float32) + 1) * 0.5 * (hi_n - lo_n)).astype(np.float32)
