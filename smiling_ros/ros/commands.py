"""Command descriptions (smiling_ros.io.commands) as the real ROS messages.

    cls = command_message_class(spec.interface)
    pub = node.create_publisher(cls, spec.topic, COMMAND)
    filler = CommandMessages(spec)
    pub.publish(filler.message(builder.forward(action)))

Message objects are reused per interface (a 500 Hz stream allocates nothing for forward commands).
"""
from __future__ import annotations

import array
from typing import Any, Optional

import numpy as np

from smiling_ros.io.commands import CommandSpec, ForwardCommand, TrajectoryCommand, TwistCommand


def command_message_class(interface: str) -> type:
    """The message class an interface publishes."""
    if interface == "joint_trajectory":
        from trajectory_msgs.msg import JointTrajectory

        return JointTrajectory
    if interface == "servo_twist":
        from geometry_msgs.msg import TwistStamped

        return TwistStamped
    from std_msgs.msg import Float64MultiArray

    return Float64MultiArray


def _duration(d: Any, seconds: float) -> None:
    ns = int(round(seconds * 1e9))
    d.sec, d.nanosec = divmod(ns, 1_000_000_000)


class CommandMessages:
    """Fills the message for a command description (see the module docstring)."""

    def __init__(self, spec: CommandSpec, clock_ns: Optional[Any] = None):
        self.spec = spec
        self.cls = command_message_class(spec.interface)
        self._msg = self.cls()
        self._clock_ns = clock_ns  # () -> ROS time [ns] for TwistStamped stamps

    def message(self, cmd: Any) -> Any:
        if isinstance(cmd, ForwardCommand):
            self._msg.data = cmd.data
            return self._msg
        if isinstance(cmd, TwistCommand):
            m = self._msg
            m.header.frame_id = cmd.frame_id
            if self._clock_ns is not None:
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(self._clock_ns()), 1_000_000_000)
            m.twist.linear.x, m.twist.linear.y, m.twist.linear.z = (float(v) for v in cmd.linear)
            m.twist.angular.x, m.twist.angular.y, m.twist.angular.z = (float(v) for v in cmd.angular)
            return m
        if isinstance(cmd, TrajectoryCommand):
            return self._trajectory(cmd)
        raise TypeError(f"not a command description: {type(cmd).__name__}")


    def _trajectory(self, cmd: TrajectoryCommand) -> Any:
        """The JointTrajectory, reusing the message and its point objects (a stream fills one per tick)."""
        from trajectory_msgs.msg import JointTrajectoryPoint

        msg = self._msg
        if list(msg.joint_names) != cmd.joint_names:
            msg.joint_names = list(cmd.joint_names)
        pool: Optional[list[Any]] = getattr(self, "_points", None)
        if pool is None:
            pool = []
            self._points = pool
        while len(pool) < len(cmd.times_s):
            pool.append(JointTrajectoryPoint())
        points = pool[:len(cmd.times_s)]
        for i, p in enumerate(points):
            p.positions = array.array("d", cmd.positions[i])
            p.velocities = array.array("d", cmd.velocities[i] if cmd.velocities is not None else ())
            ns = int(round(cmd.times_s[i] * 1e9))
            p.time_from_start.sec, p.time_from_start.nanosec = divmod(ns, 1_000_000_000)
        msg.points = points
        return msg


def trajectory_message(cmd: TrajectoryCommand) -> Any:
    """trajectory_msgs/JointTrajectory with header stamp zero (the JTC starts it on receipt)."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.joint_names = list(cmd.joint_names)
    points = []
    for i, (t, pos) in enumerate(zip(cmd.times_s, cmd.positions)):
        p = JointTrajectoryPoint()
        p.positions = np.asarray(pos, np.float64)
        if cmd.velocities is not None:
            p.velocities = np.asarray(cmd.velocities[i], np.float64)
        _duration(p.time_from_start, t)
        points.append(p)
    msg.points = points
    return msg


def trajectory_from_message(msg: Any) -> tuple[list[str], np.ndarray, np.ndarray, Optional[np.ndarray], int]:
    """(joint_names, times [s] (n,), positions (n, j), velocities (n, j) or None, stamp [ns]) of a
    JointTrajectory; velocities are None unless every point has them."""
    names = list(msg.joint_names)
    n, j = len(msg.points), len(names)
    times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points], np.float64)
    pos = np.full((n, j), np.nan)
    vel = np.full((n, j), np.nan)
    has_vel = n > 0
    for i, p in enumerate(msg.points):
        if len(p.positions) == j:
            pos[i] = np.asarray(p.positions, np.float64)
        if len(p.velocities) == j:
            vel[i] = np.asarray(p.velocities, np.float64)
        else:
            has_vel = False
    stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    return names, times, pos, (vel if has_vel else None), int(stamp)


class CommandOutput:
    """The command side of a node: publisher, builder, message, and (for velocity actions sent as a
    trajectory) the latest measured joint positions from ``joint_states_topic``.

    ``create_publisher`` is the node's publisher factory (a lifecycle node passes
    ``create_lifecycle_publisher``; ``publisher`` reuses one made earlier). :meth:`send` publishes one action or a timed chunk and returns
    False when nothing could be sent (no joint positions yet, or older than ``max_joint_age_s``).
    """

    def __init__(self, node: Any, spec: CommandSpec, qos: Any, create_publisher: Any = None,
                 joint_states_topic: str = "/joint_states", max_joint_age_s: float = 0.5, publisher: Any = None):
        import time

        from smiling_ros.io.commands import CommandBuilder

        self.spec = spec
        self.builder = CommandBuilder(spec)
        self.messages = CommandMessages(spec, clock_ns=lambda: node.get_clock().now().nanoseconds)
        factory = create_publisher or node.create_publisher
        self.publisher = publisher if publisher is not None else factory(self.messages.cls, spec.topic, qos)
        self._node = node
        self._now = time.monotonic_ns
        self._q: Optional[np.ndarray] = None
        self._q_ns = 0
        self._max_age_ns = int(max_joint_age_s * 1e9)
        self._index: Optional[list[int]] = None
        self._names: list[str] = []
        self._names_len = -1
        self._sub = None
        self.last_warning: Optional[str] = None
        if spec.needs_joint_positions:
            from sensor_msgs.msg import JointState

            from smiling_ros.ros.qos import SENSOR

            self._sub = node.create_subscription(JointState, joint_states_topic, self._on_joint_state, SENSOR)
            self.joint_states_topic = joint_states_topic

    def _on_joint_state(self, msg: Any) -> None:
        names = list(msg.name)
        if self._index is None or len(names) != self._names_len or names != self._names:
            try:
                self._index = [names.index(j) for j in self.spec.joints]
            except ValueError:
                missing = [j for j in self.spec.joints if j not in names]
                self.last_warning = f"{self.joint_states_topic}: joint {missing[0]} missing; no trajectory sent"
                self._index = None
                return
            self._names, self._names_len = names, len(names)
        pos = msg.position
        if len(pos) != len(names):
            return
        q = np.array([pos[i] for i in self._index], np.float64)
        if np.all(np.isfinite(q)):
            self._q, self._q_ns = q, self._now()

    def joint_positions(self) -> Optional[np.ndarray]:
        if self._q is None or self._now() - self._q_ns > self._max_age_ns:
            return None
        return self._q

    def build(self, action: Optional[np.ndarray], chunk: Optional[np.ndarray] = None,
              times_s: Optional[Any] = None) -> Any:
        """The command description for an action or a timed chunk (None: nothing to send)."""
        q = self.joint_positions() if self.spec.needs_joint_positions else None
        if self.spec.needs_joint_positions and q is None:
            self.last_warning = (f"no recent joint positions on {self.joint_states_topic}; "
                                 "velocity trajectory not sent")
            return None
        if chunk is not None:
            if times_s is None:
                times_s = np.arange(len(chunk)) * self.spec.step_s
            return self.builder.chunk(chunk, list(np.asarray(times_s, np.float64)), q)
        if action is None:
            return None
        return self.builder.single(action, q)

    def send(self, action: Optional[np.ndarray], chunk: Optional[np.ndarray] = None,
             times_s: Optional[Any] = None) -> bool:
        cmd = self.build(action, chunk, times_s)
        if cmd is None:
            return False
        self.publisher.publish(self.messages.message(cmd))
        return True

    def destroy(self, destroy_publisher: Any = None) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None
        (destroy_publisher or self._node.destroy_publisher)(self.publisher)
