"""A scripted expert for Gymnasium's Reacher-v5 with two modes (elbow up / elbow down).

Inverse kinematics of the two-link arm (links 0.1 m and 0.11 m) gives the joint angles that put
the fingertip on the target, on one of two branches (elbow sign, drawn per episode with p = 0.5);
a joint-space PD law tracks them: torque = clip(kp * wrap(q* - q) - kd * qdot, -1, 1).

Observation (10,): cos q (2), sin q (2), target xy (2), qdot (2), fingertip - target (2).
:class:`SuccessInfo` adds ``info['is_success']`` (fingertip within ``SUCCESS_DIST`` of the target).
"""
from __future__ import annotations

from typing import Optional

import gymnasium
import numpy as np

L1, L2 = 0.1, 0.11
SUCCESS_DIST = 0.02  # m


def elbow_mode(obs_rows: np.ndarray) -> Optional[str]:
    """'up' (sin q2 > 0) or 'down' at the last row of a Reacher trajectory (T, 10)."""
    s2 = float(np.asarray(obs_rows)[-1, 3])
    return "up" if s2 > 0 else "down"


class ReacherExpert:
    obs_dim, act_dim = 10, 2

    def __init__(self, seed: Optional[int] = None, kp: float = 0.5, kd: float = 0.1, mode: Optional[str] = None):
        self.rng = np.random.default_rng(seed)
        self.kp, self.kd, self.fixed = kp, kd, mode
        self.sign = 1.0

    def reset(self, obs=None) -> None:
        mode = self.fixed or ("up" if self.rng.random() < 0.5 else "down")
        self.sign = 1.0 if mode == "up" else -1.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        o = np.asarray(obs, np.float64)
        q = np.arctan2(o[2:4], o[0:2])
        tx, ty = o[4], o[5]
        c2 = np.clip((tx * tx + ty * ty - L1 * L1 - L2 * L2) / (2 * L1 * L2), -1.0, 1.0)
        q2 = self.sign * np.arccos(c2)
        q1 = np.arctan2(ty, tx) - np.arctan2(L2 * np.sin(q2), L1 + L2 * np.cos(q2))
        err = np.array([q1, q2]) - q
        err = (err + np.pi) % (2 * np.pi) - np.pi
        return np.clip(self.kp * err - self.kd * o[6:8], -1.0, 1.0).astype(np.float32)


class SuccessInfo(gymnasium.Wrapper):
    """info['is_success'] = |fingertip - target| < SUCCESS_DIST."""

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        info["is_success"] = bool(np.linalg.norm(obs[8:10]) < SUCCESS_DIST)
        return obs, r, term, trunc, info
