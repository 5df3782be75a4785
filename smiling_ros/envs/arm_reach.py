"""ArmReach: the project's own MuJoCo task (``smiling_ros/ArmReach-v0``, model ``sim/arm_reach.xml``).

A planar two-link arm (hinge axes vertical, like a SCARA) moves its fingertip from a start near the
shoulder to a target on the far side of a post. The post blocks the straight line, so the fingertip
must pass it on the left (y > 0) or on the right (y < 0); both work.

Geometry (metres, world frame: x forward from the shoulder, y left):
    upper arm 0.50, forearm 0.40; fingertip ball radius 0.02;
    post: box centred at ``POST_XY = (0.50, 0.00)``, half sizes ``POST_HALF = (0.04, 0.09)``;
    start fingertip ~ (0.25 +- 0.03, 0.00 +- 0.06); target ~ (0.78 +- 0.04, 0.00 +- 0.08).

Observation, float64, shape (8,) (``OBS_LAYOUT``):
    [0:2] joint positions (shoulder, elbow) [rad]
    [2:4] joint velocities [rad/s]
    [4:6] fingertip xy [m]
    [6:8] target xy [m]
Action, shape (2,), in [-1, 1]: joint velocity commands as fractions of ``MAX_JOINT_VEL`` (1.5 rad/s),
tracked by MuJoCo velocity servos. Control period 0.05 s (20 Hz, 10 physics steps of 5 ms).
Horizon: 100 steps (truncation by the registered TimeLimit; the env never terminates).
Reward per step: ``-d - 0.01 |a|^2 - 0.1 * contact`` with d the fingertip-target distance [m] and
contact 1 while the fingertip touches the post. ``info``: ``is_success`` (d < ``SUCCESS_DIST`` = 0.04 m,
at every step), ``distance``, ``contact``.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from smiling_ros.errors import UserError

L1, L2 = 0.50, 0.40
POST_XY = np.array([0.50, 0.00])
POST_HALF = np.array([0.04, 0.09])
TIP_RADIUS = 0.02
MAX_JOINT_VEL = 1.5  # rad/s for action 1.0
SUCCESS_DIST = 0.04  # m
START_XY, START_JITTER = np.array([0.25, 0.0]), np.array([0.03, 0.06])
TARGET_XY, TARGET_JITTER = np.array([0.78, 0.0]), np.array([0.04, 0.08])
HORIZON = 100
FRAME_SKIP = 10
CTRL_COST, CONTACT_COST = 0.01, 0.1

OBS_LAYOUT = {"qpos": slice(0, 2), "qvel": slice(2, 4), "tip": slice(4, 6), "target": slice(6, 8)}
OBS_DIM, ACT_DIM = 8, 2


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Fingertip xy [m] for joint angles ``q`` = (shoulder, elbow) [rad]; (..., 2) -> (..., 2)."""
    q = np.asarray(q, dtype=np.float64)
    q1, q12 = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([L1 * np.cos(q1) + L2 * np.cos(q12), L1 * np.sin(q1) + L2 * np.sin(q12)], axis=-1)


def jacobian(q: np.ndarray) -> np.ndarray:
    """d(fingertip xy)/d(q), (2, 2), for one joint vector ``q`` [rad]."""
    q1, q12 = float(q[0]), float(q[0] + q[1])
    s1, c1, s12, c12 = np.sin(q1), np.cos(q1), np.sin(q12), np.cos(q12)
    return np.array([[-L1 * s1 - L2 * s12, -L2 * s12], [L1 * c1 + L2 * c12, L2 * c12]])


def inverse_kinematics(xy: np.ndarray, elbow_sign: float = 1.0) -> np.ndarray:
    """Joint angles placing the fingertip at ``xy`` (must be reachable), elbow bent to ``elbow_sign``."""
    x, y = float(xy[0]), float(xy[1])
    c2 = (x * x + y * y - L1 * L1 - L2 * L2) / (2 * L1 * L2)
    q2 = elbow_sign * np.arccos(np.clip(c2, -1.0, 1.0))
    q1 = np.arctan2(y, x) - np.arctan2(L2 * np.sin(q2), L1 + L2 * np.cos(q2))
    return np.array([q1, q2])


def model_path() -> str:
    from smiling_ros.paths import share_dir

    path = share_dir("sim") / "arm_reach.xml"
    if not path.exists():
        raise UserError(f"{path}: ArmReach model not found (package data missing?)")
    return str(path)


class ArmReachEnv(gymnasium.Env):
    """Planar arm reaching around a post; see the module docstring for spaces and reward.

    ``model`` and ``data`` are the MuJoCo model and data (as in Gymnasium's MuJoCo envs), so
    :func:`smiling_ros.envs.joint_state` works on it. ``render_mode='rgb_array'`` renders the top camera.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: Optional[str] = None, width: int = 320, height: int = 240):
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"ArmReach: render_mode must be None or 'rgb_array', got '{render_mode}'")
        self.render_mode = render_mode
        self.model = mujoco.MjModel.from_xml_path(model_path())
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * FRAME_SKIP
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)
        m = self.model
        self._tip_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        self._target_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "target")
        self._tip_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "fingertip")
        self._post_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "post")
        self._target = TARGET_XY.copy()
        self._size = (width, height)
        self._renderer = None

    # ----------------------------------------------------------------------------- gym API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        rng = self.np_random
        start = START_XY + rng.uniform(-1, 1, 2) * START_JITTER
        self._target = TARGET_XY + rng.uniform(-1, 1, 2) * TARGET_JITTER
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = inverse_kinematics(start, elbow_sign=1.0)
        self.data.qvel[:] = rng.uniform(-0.01, 0.01, 2)
        self.model.site_pos[self._target_site, :2] = self._target
        mujoco.mj_forward(self.model, self.data)
        obs = self._obs()
        return obs, self._info(obs, contact=False)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(ACT_DIM), -1.0, 1.0)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"ArmReach: non-finite action {action!r}")
        self.data.ctrl[:] = a * MAX_JOINT_VEL
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        obs = self._obs()
        contact = self._touching_post()
        d = float(np.linalg.norm(obs[4:6] - obs[6:8]))
        reward = -d - CTRL_COST * float(a @ a) - CONTACT_COST * float(contact)
        return obs, reward, False, False, self._info(obs, contact, d)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, height=self._size[1], width=self._size[0])
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ----------------------------------------------------------------------------- helpers
    def _obs(self) -> np.ndarray:
        d = self.data
        tip = d.site_xpos[self._tip_site, :2]
        return np.concatenate([d.qpos[:2], d.qvel[:2], tip, self._target])

    def _touching_post(self) -> bool:
        pair = {self._tip_geom, self._post_geom}
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if {int(c.geom1), int(c.geom2)} == pair and c.dist < 1e-3:
                return True
        return False

    @staticmethod
    def _info(obs: np.ndarray, contact: bool, d: Optional[float] = None) -> dict[str, Any]:
        if d is None:
            d = float(np.linalg.norm(obs[4:6] - obs[6:8]))
        return {"is_success": bool(d < SUCCESS_DIST), "distance": d, "contact": bool(contact)}
