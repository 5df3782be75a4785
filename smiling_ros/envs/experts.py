"""Controllers for ArmReach that need no learning, and a check of which way a trajectory went.

- :class:`ScriptedExpert`: operational-space control (Cartesian velocity through a damped
  least-squares Jacobian inverse) along waypoints that pass the post on the side chosen at
  random per episode (``mode`` 'left' = y > 0, 'right' = y < 0, p = 0.5 each). Multimodal
  demonstrations by construction.
- :class:`StraightLineController`: the same controller aimed straight at the target, ignoring
  the post; it gets caught on the post (informative but flawed; a BRIDGER source).
- :func:`passing_side`: which side of the post a fingertip trajectory passed.

All work from the observation vector alone (layout in :mod:`smiling_ros.envs.arm_reach`), so they
also run from an observation received over ROS.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from smiling_ros.envs import arm_reach as ar

_CLEAR_Y = ar.POST_HALF[1] + ar.TIP_RADIUS + 0.06  # lateral waypoint distance from the post axis [m]
_CLEAR_X = ar.POST_HALF[0] + ar.TIP_RADIUS + 0.03  # waypoints this far before/after the post centre [m]
_CRUISE = 0.5  # Cartesian speed between waypoints [m/s]
_GAIN = 4.0  # proportional gain on the final approach [1/s]
_SWITCH = 0.05  # switch to the next waypoint within this distance [m]


def _cartesian_to_action(q: np.ndarray, v: np.ndarray, damping: float = 0.03) -> np.ndarray:
    """Joint-velocity action in [-1, 1]^2 that moves the fingertip with velocity ``v`` [m/s].

    Damped least squares: qd = J^T (J J^T + damping^2 I)^-1 v; scaled down uniformly (keeping the
    direction) when a joint would exceed ``MAX_JOINT_VEL``.
    """
    J = ar.jacobian(q)
    qd = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(2), v)
    a = qd / ar.MAX_JOINT_VEL
    peak = np.max(np.abs(a))
    if peak > 1.0:
        a = a / peak
    return a.astype(np.float32)


def _velocity_towards(tip: np.ndarray, goal: np.ndarray, final: bool) -> np.ndarray:
    """Cartesian velocity [m/s]: cruise speed towards an intermediate waypoint, P-control at the goal."""
    delta = goal - tip
    dist = float(np.linalg.norm(delta))
    if dist < 1e-9:
        return np.zeros(2)
    speed = min(_CRUISE, _GAIN * dist) if final else _CRUISE
    return delta / dist * speed


class ScriptedExpert:
    """Waypoint follower around the post; ``mode`` ('left' or 'right') drawn at ``reset``.

    ``reset(obs)`` starts an episode (draws the side from the expert's own RNG, seeded by ``seed``);
    ``act(obs) -> (2,) float32`` action in [-1, 1]. Works on one observation at a time.
    """

    obs_dim = ar.OBS_DIM
    act_dim = ar.ACT_DIM

    def __init__(self, seed: Optional[int] = None, mode: Optional[str] = None):
        if mode not in (None, "left", "right"):
            raise ValueError(f"mode must be 'left', 'right' or None (random), got {mode!r}")
        self.rng = np.random.default_rng(seed)
        self.fixed_mode = mode
        self.mode = mode or "left"
        self._waypoints: list[np.ndarray] = []
        self._index = 0

    def reset(self, obs: Optional[np.ndarray] = None) -> None:
        self.mode = self.fixed_mode or ("left" if self.rng.random() < 0.5 else "right")
        sign = 1.0 if self.mode == "left" else -1.0
        # Small per-episode variation of the lateral clearance keeps demonstrations from being identical.
        clear = _CLEAR_Y + self.rng.uniform(0.0, 0.03)
        px, py = ar.POST_XY
        self._waypoints = [np.array([px - _CLEAR_X, py + sign * clear]),
                           np.array([px + _CLEAR_X, py + sign * clear])]
        self._index = 0
        if obs is not None:
            self._advance(np.asarray(obs, dtype=np.float64)[ar.OBS_LAYOUT["tip"]])

    def _advance(self, tip: np.ndarray) -> None:
        while self._index < len(self._waypoints):
            wp = self._waypoints[self._index]
            # Passed a waypoint when close to it or already beyond it along x (the travel direction).
            if np.linalg.norm(wp - tip) < _SWITCH or tip[0] > wp[0]:
                self._index += 1
            else:
                break

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim != 1:
            raise ValueError(f"ScriptedExpert.act takes one observation (8,), got shape {obs.shape}")
        if not self._waypoints:
            self.reset(obs)
        q, tip, target = obs[ar.OBS_LAYOUT["qpos"]], obs[ar.OBS_LAYOUT["tip"]], obs[ar.OBS_LAYOUT["target"]]
        self._advance(tip)
        if self._index < len(self._waypoints):
            v = _velocity_towards(tip, self._waypoints[self._index], final=False)
        else:
            v = _velocity_towards(tip, target, final=True)
        return _cartesian_to_action(q, v)


class StraightLineController:
    """Heads straight for the target, ignoring the post (gets caught on it)."""

    obs_dim = ar.OBS_DIM
    act_dim = ar.ACT_DIM

    def reset(self, obs: Optional[np.ndarray] = None) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim == 2:
            return np.stack([self.act(o) for o in obs])
        q, tip, target = obs[ar.OBS_LAYOUT["qpos"]], obs[ar.OBS_LAYOUT["tip"]], obs[ar.OBS_LAYOUT["target"]]
        return _cartesian_to_action(q, _velocity_towards(tip, target, final=True))


def passing_side(obs_seq: np.ndarray) -> Optional[str]:
    """'left' (y > post) or 'right' (y < post): the side on which the fingertip first crossed the
    post's x centre, from ArmReach observation rows (T, 8); None if it never got past the post's
    near face."""
    obs_seq = np.asarray(obs_seq, dtype=np.float64)
    if obs_seq.ndim != 2 or obs_seq.shape[1] < ar.OBS_DIM:
        raise ValueError(f"passing_side expects ArmReach observations (T, {ar.OBS_DIM}), got {obs_seq.shape}")
    tip = obs_seq[:, ar.OBS_LAYOUT["tip"]]
    past = np.nonzero(tip[:, 0] >= ar.POST_XY[0])[0]
    if past.size == 0:
        return None
    y = tip[past[0], 1] - ar.POST_XY[1]
    return "left" if y > 0 else "right"
