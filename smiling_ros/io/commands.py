"""Outbound commands: an action (or a timed action chunk) as the message the robot's controller takes.

ROS-free: :class:`CommandBuilder` turns actions into plain descriptions (:class:`ForwardCommand`,
:class:`TrajectoryCommand`, :class:`TwistCommand`); ``smiling_ros.ros.commands`` fills the real
messages from them. One :class:`CommandSpec`, built from the robot config's ``command`` section and
the command limits, says which interface is used:

- ``forward``: std_msgs/Float64MultiArray for a forward_command_controller / JointGroup{Position,
  Velocity,Effort}Controller: ``data`` = the action, in the order of ``command.joints``.
- ``joint_trajectory``: trajectory_msgs/JointTrajectory for a joint_trajectory_controller's
  ``~/joint_trajectory`` topic: ``joint_names`` = ``command.joints``; one point per planned action,
  ``time_from_start`` strictly increasing, the first point in the future (one policy step after the
  observation for a fresh plan); header stamp zero, which the JTC reads as "start now" (on receipt).
  Position actions are the points' positions; velocity actions become the points' velocities and
  are integrated to positions from the latest measured joint positions (zero-order hold: action k
  acts from its time until the next action's).
- ``servo_twist``: geometry_msgs/TwistStamped for MoveIt Servo's ``~/delta_twist_cmds``: the
  action is (vx, vy, vz, wx, wy, wz) in ``command.frame_id``.

``command.scale`` converts action units to the controller's units (SI): a velocity action given in
fractions of 1.5 rad/s has scale 1.5. Forward commands are sent in action units (the forward
controller's own units are the training data's); trajectories and twists in SI units.

Times: integers in nanoseconds of the caller's clock; a trajectory's ``times_s`` are seconds
relative to the moment it is published.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from smiling_ros.errors import UserError

INTERFACES = ("forward", "joint_trajectory", "servo_twist")
# The action meanings each interface can carry.
INTERFACE_MEANINGS = {
    "forward": ("position", "velocity", "effort"),
    "joint_trajectory": ("position", "velocity"),
    "servo_twist": ("twist",),
}
TWIST_DIM = 6


@dataclass
class ForwardCommand:
    data: list[float]


@dataclass
class TrajectoryCommand:
    """A JointTrajectory: ``times_s`` (n,) strictly increasing, > 0, relative to publishing;
    ``positions`` (n, joints); ``velocities`` (n, joints) or None."""

    joint_names: list[str]
    times_s: list[float]
    positions: list[list[float]]
    velocities: Optional[list[list[float]]] = None


@dataclass
class TwistCommand:
    frame_id: str
    linear: list[float]
    angular: list[float]


Command = ForwardCommand | TrajectoryCommand | TwistCommand


def checkpoint_action_meaning(meta: Optional[dict[str, Any]]) -> str:
    """What a checkpoint's actions mean (``position``/``velocity``/``effort``/``twist``), from its
    action spec (``action_spec.meaning``) or the config it was trained with (``command.meaning``);
    "" when it does not say."""
    if not isinstance(meta, dict):
        return ""
    spec = meta.get("action_spec")
    if isinstance(spec, dict) and isinstance(spec.get("meaning"), str) and spec["meaning"]:
        return spec["meaning"]
    cfg = meta.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("command"), dict):
        m = cfg["command"].get("meaning")
        if isinstance(m, str):
            return m
    return ""


@dataclass
class CommandSpec:
    """Everything needed to turn actions into commands (see the module docstring).

    interface, topic, joints, frame_id: from the config's ``command`` section (topic resolved).
    meaning: what an action element is (checked against the interface by :meth:`resolve`).
    low, high: command limits in action units (act_dim,). scale: SI units per action unit (act_dim,).
    step_s: the policy step [s] (time between the planned actions of a chunk).
    min_lead_s: a trajectory point less than this far ahead of publishing is left out.
    """

    interface: str
    topic: str
    joints: list[str]
    meaning: str
    frame_id: str
    low: np.ndarray
    high: np.ndarray
    scale: np.ndarray
    step_s: float
    min_lead_s: float = 0.001

    @property
    def act_dim(self) -> int:
        return int(self.low.shape[0])

    @classmethod
    def resolve(cls, cfg: Any, low: np.ndarray, high: np.ndarray, step_s: float,
                checkpoint_meaning: str = "", checkpoint: str = "checkpoint",
                topic: Optional[str] = None) -> "CommandSpec":
        """Build and check the spec for a policy with limits ``low``/``high`` (act_dim,).

        The action's meaning comes from the checkpoint where it says; the config's
        ``command.meaning`` must then agree. Refused with one line naming the file: a meaning the
        interface cannot carry, a trajectory without a declared meaning, joints that do not match
        the action size, a twist that is not 6 values.
        """
        c = cfg.command
        where = f"{getattr(cfg, 'path', '') or 'config'}: command"
        low = np.asarray(low, np.float64).reshape(-1)
        high = np.asarray(high, np.float64).reshape(-1)
        act_dim = int(low.shape[0])
        meaning = checkpoint_meaning or c.meaning
        if checkpoint_meaning and c.meaning and checkpoint_meaning != c.meaning:
            raise UserError(f"{checkpoint}: actions are {checkpoint_meaning} commands but {where}.meaning "
                            f"is '{c.meaning}'")
        allowed = INTERFACE_MEANINGS[c.interface]
        if meaning and meaning not in allowed:
            src = checkpoint if checkpoint_meaning else f"{where}.meaning"
            raise UserError(f"{src}: {meaning} actions cannot go to interface '{c.interface}' "
                            f"(it takes {' or '.join(allowed)})")
        if c.interface == "joint_trajectory" and not meaning:
            raise UserError(f"{where}.meaning: interface 'joint_trajectory' needs the action's meaning "
                            "(position or velocity); the checkpoint does not say")
        if c.interface == "servo_twist":
            if act_dim != TWIST_DIM:
                raise UserError(f"{checkpoint}: interface 'servo_twist' takes 6 action values (vx vy vz wx wy wz), "
                                f"the policy has {act_dim}")
            meaning = "twist"
        elif c.joints and len(c.joints) != act_dim:
            raise UserError(f"{where}.joints: {len(c.joints)} joints but the policy's actions have {act_dim} "
                            "elements")
        if c.interface == "joint_trajectory" and not c.joints:
            raise UserError(f"{where}.joints: interface 'joint_trajectory' needs the controller's joint names")
        scale = np.asarray(c.scale if c.scale else [1.0] * act_dim, np.float64).reshape(-1)
        if scale.shape == (1,):
            scale = np.full(act_dim, float(scale[0]))
        if scale.shape != (act_dim,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise UserError(f"{where}.scale: one positive number or one per action element ({act_dim}), "
                            f"got {list(c.scale)}")
        if not (math.isfinite(step_s) and step_s > 0):
            raise UserError(f"policy step must be > 0 s, got {step_s}")
        return cls(c.interface, topic or cfg.command_topic, list(c.joints), meaning, c.frame_id, low, high,
                   scale, float(step_s))

    @property
    def needs_joint_positions(self) -> bool:
        """True when commands need the measured joint positions (velocity actions as a trajectory)."""
        return self.interface == "joint_trajectory" and self.meaning == "velocity"


class CommandBuilder:
    """Actions -> command descriptions for one :class:`CommandSpec` (see the module docstring).

    Every value that goes out is finite; actions are clamped to ``[low, high]`` first (the control
    loop already did; this is the last line). A chunk with any non-finite value is refused
    (``UserError``), never partly sent.
    """

    def __init__(self, spec: CommandSpec):
        self.spec = spec
        self._low, self._high = spec.low, spec.high

    def _clean(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.spec.act_dim:
            raise UserError(f"command: actions of shape {a.shape}, expected (n, {self.spec.act_dim})")
        if not np.all(np.isfinite(a)):
            raise UserError(f"command: non-finite action for {self.spec.topic}; not sent")
        return np.clip(a, self._low, self._high)

    def forward(self, action: np.ndarray) -> ForwardCommand:
        return ForwardCommand(self._clean(action)[0].tolist())

    def twist(self, action: np.ndarray) -> TwistCommand:
        v = self._clean(action)[0] * self.spec.scale
        return TwistCommand(self.spec.frame_id, v[:3].tolist(), v[3:].tolist())

    def trajectory(self, actions: np.ndarray, times_s: Sequence[float],
                   joint_positions: Optional[np.ndarray] = None) -> Optional[TrajectoryCommand]:
        """A trajectory from planned ``actions`` (n, act_dim) and the times [s, relative to now] at
        which each one starts to act (``times_s``, increasing; the first may be <= 0 when it
        already acts). Each point lies one policy step after its action's start: a position action
        is reached there; a velocity action's integral up to there gives the point's position.
        Points less than ``min_lead_s`` ahead are left out. None when no point is left."""
        a = self._clean(actions)
        t0 = np.asarray(times_s, np.float64).reshape(-1)
        if t0.shape[0] != a.shape[0] or not np.all(np.isfinite(t0)):
            raise UserError(f"command: {t0.shape[0]} times for {a.shape[0]} actions")
        step = self.spec.step_s
        ends = np.append(t0[1:], t0[-1] + step) if len(t0) > 1 else t0 + step
        ends = np.maximum(ends, t0 + 1e-9)
        si = a * self.spec.scale
        if self.spec.meaning == "velocity":
            if joint_positions is None:
                return None
            q = np.asarray(joint_positions, np.float64).reshape(-1)
            if q.shape != (self.spec.act_dim,) or not np.all(np.isfinite(q)):
                raise UserError(f"command: joint positions {q.tolist()} do not fit {self.spec.joints}")
            # Zero-order hold from now: action k acts over [max(t0_k, 0), end_k).
            dur = np.clip(ends, 0.0, None) - np.clip(t0, 0.0, None)
            positions = q + np.cumsum(si * dur[:, None], axis=0)
            velocities: Optional[np.ndarray] = si
        else:
            positions, velocities = si, None
        keep = ends >= self.spec.min_lead_s
        # Strictly increasing times: ends are increasing because action times are.
        if not keep.any():
            return None
        times = ends[keep]
        if np.any(np.diff(times) <= 0):
            raise UserError("command: trajectory times are not strictly increasing")
        return TrajectoryCommand(
            list(self.spec.joints), times.tolist(), positions[keep].tolist(),
            None if velocities is None else velocities[keep].tolist())

    def single(self, action: np.ndarray, joint_positions: Optional[np.ndarray] = None) -> Optional[Command]:
        """The command for one action computed now (a chunk of one)."""
        return self.chunk(np.asarray(action, np.float64)[None], [0.0], joint_positions)

    def chunk(self, actions: np.ndarray, times_s: Sequence[float],
              joint_positions: Optional[np.ndarray] = None) -> Optional[Command]:
        """The command for a timed chunk: the whole trajectory for ``joint_trajectory``, else the
        action acting now (the last one whose time is <= 0, else the first)."""
        if self.spec.interface == "joint_trajectory":
            return self.trajectory(actions, times_s, joint_positions)
        a = np.asarray(actions, np.float64)
        if a.ndim == 1:
            return self.twist(a) if self.spec.interface == "servo_twist" else self.forward(a)
        t = np.asarray(times_s, np.float64).reshape(-1)
        i = int(np.searchsorted(t, 0.0, side="right")) - 1
        row = a[max(i, 0)]
        return self.twist(row) if self.spec.interface == "servo_twist" else self.forward(row)
