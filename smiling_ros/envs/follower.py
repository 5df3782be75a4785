"""A small joint_trajectory_controller-like follower for a simulated robot (sim_node).

It takes trajectories as a JTC does on ``~/joint_trajectory`` (joint names in any order, points
with ``time_from_start`` relative to the trajectory's start; header stamp zero = start on receipt)
and turns them into the simulated robot's own actions: a new trajectory replaces the old one from
its start; the current position is the implicit point at time 0 and the received points are
interpolated linearly; points already in the past are skipped; after the last point the robot
holds the last position.

For a velocity-actuated robot (action = velocity / scale) the action of a step of ``dt`` seconds
is the velocity that reaches the trajectory's position at the end of the step (a dead-beat
tracker: the sim steps at the task's rate, far below a JTC's 500 Hz loop); for a
position-actuated one it is that position / scale.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from smiling_ros.errors import UserError


class TrajectoryFollower:
    """Follows received trajectories for ``joints`` (see the module docstring).

    meaning: ``velocity`` or ``position`` (what the robot's action is); scale: SI units per action
    unit (act_dim,); low/high: the action limits the result is clipped to.
    """

    def __init__(self, joints: Sequence[str], meaning: str, scale: np.ndarray, low: np.ndarray, high: np.ndarray):
        if meaning not in ("velocity", "position"):
            raise UserError(f"trajectory follower: a robot with {meaning or 'undeclared'} actions cannot follow "
                            "trajectories (command.meaning: velocity or position)")
        self.joints = list(joints)
        self.meaning = meaning
        self.scale = np.asarray(scale, np.float64)
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self._t: Optional[np.ndarray] = None  # absolute times [s] of the points, first = start (current state)
        self._p: Optional[np.ndarray] = None
        self.received = 0

    def set(self, names: Sequence[str], times_s: np.ndarray, positions: np.ndarray, start_s: float,
            now_s: float, q_now: np.ndarray) -> Optional[str]:
        """Take a trajectory starting at ``start_s`` (clock of ``now_s``); returns a reason when it
        is rejected (the previous one is then kept)."""
        names = list(names)
        if sorted(names) != sorted(self.joints) or len(names) != len(self.joints):
            return f"joint_names {names} are not the controller's joints {self.joints}"
        times = np.asarray(times_s, np.float64)
        pos = np.asarray(positions, np.float64)
        if times.size == 0:
            return "no points"
        if pos.shape != (times.size, len(names)) or not np.all(np.isfinite(pos)) or not np.all(np.isfinite(times)):
            return "points without positions for every joint, or non-finite values"
        if np.any(np.diff(times) <= 0):
            return "time_from_start is not strictly increasing"
        order = [names.index(j) for j in self.joints]
        pos = pos[:, order]
        abs_t = start_s + times
        keep = abs_t > now_s
        if not keep.any():
            return "every point lies in the past"
        self._t = np.concatenate([[now_s], abs_t[keep]])
        self._p = np.vstack([np.asarray(q_now, np.float64)[None], pos[keep]])
        self.received += 1
        return None

    def clear(self) -> None:
        """Forget the trajectory (e.g. the robot was reset): no action until the next one."""
        self._t = self._p = None

    def position(self, t_s: float) -> Optional[np.ndarray]:
        """The trajectory's position at ``t_s`` (held before the start and after the last point)."""
        if self._t is None:
            return None
        t, p = self._t, self._p
        if p is None:
            return None
        if t_s <= t[0]:
            return p[0].copy()
        if t_s >= t[-1]:
            return p[-1].copy()
        i = int(np.searchsorted(t, t_s, side="right")) - 1
        w = (t_s - t[i]) / (t[i + 1] - t[i])
        return p[i] + w * (p[i + 1] - p[i])

    def action(self, now_s: float, dt_s: float, q: np.ndarray, sim_dt_s: Optional[float] = None) -> Optional[np.ndarray]:
        """The robot action for the step from ``now_s`` to ``now_s + dt_s`` (None: no trajectory yet).
        ``sim_dt_s``: simulated seconds the step lasts (default ``dt_s``)."""
        target = self.position(now_s + dt_s)
        if target is None:
            return None
        if self.meaning == "velocity":
            a = (target - np.asarray(q, np.float64)) / (sim_dt_s or dt_s) / self.scale
        else:
            a = target / self.scale
        return np.clip(a, self.low, self.high)
