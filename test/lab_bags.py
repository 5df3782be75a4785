"""Recordings as a lab makes them, written with ``rosbags`` directly (no project code): a 6-joint
arm whose driver publishes /joint_states all the time, a teleoperator who sends velocity commands
in takes, and optionally a joystick (sensor_msgs/Joy), a 10 Hz target without a header and a
50 Hz force sensor with one.

The arm is first order: each joint's velocity is the last command it received 20 ms earlier
(0 while no command arrives), its position the integral of that velocity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
T0 = 1_750_000_000_000_000_000
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3"]
CMD = "/forward_velocity_controller/commands"
LAG_NS = 20_000_000


def _time(t_ns: int):
    return T["builtin_interfaces/msg/Time"](sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def _header(t_ns: int):
    return T["std_msgs/msg/Header"](stamp=_time(t_ns), frame_id="base")


def write_bag(path: Path, msgs: list[tuple[str, str, int, object]], storage: str = "mcap") -> Path:
    """(topic, type, t_ns, msg) -> a rosbag2 directory, as ``ros2 bag record`` writes it."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    conns = {}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        for topic, msgtype, t, msg in sorted(msgs, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=TS)
            w.write(conns[topic], t, TS.serialize_cdr(msg, msgtype))
    return Path(path)


@dataclass
class Lab:
    """A continuous recording of ``takes`` takes of ``take_s`` seconds with ``pause_s`` between them.

    cmd_in_pause: the teleop device keeps publishing (zero) commands during pauses.
    velocity: /joint_states carries velocities (else positions only).
    joy_button: a /joy topic at 20 Hz; this button is held 0.2 s at each take's start and end.
    multirate: adds /target (Float64MultiArray, 10 Hz, no header) and /ft (WrenchStamped, 50 Hz).
    header: /joint_states carries header stamps (else they are left 0).
    """

    takes: int = 4
    take_s: float = 3.0
    pause_s: float = 1.4
    lead_s: float = 1.0
    js_rate: float = 100.0
    cmd_rate: float = 50.0
    cmd_in_pause: bool = False
    velocity: bool = True
    joy_button: Optional[int] = None
    multirate: bool = False
    header: bool = True
    seed: int = 0
    take_starts: list[int] = field(default_factory=list)

    def command(self, t_ns: int) -> Optional[np.ndarray]:
        """The command at t (None outside takes)."""
        for k, s in enumerate(self.take_starts):
            if s <= t_ns < s + int(self.take_s * 1e9):
                tt = (t_ns - s) * 1e-9
                phase = np.arange(6) * 0.7 + k
                return 0.4 * np.sin(2 * math.pi * 0.5 * tt + phase)
        return None

    def messages(self) -> list[tuple[str, str, int, object]]:
        span = self.takes * self.take_s + (self.takes - 1) * self.pause_s + 2 * self.lead_s
        self.take_starts = [T0 + int((self.lead_s + k * (self.take_s + self.pause_s)) * 1e9) for k in range(self.takes)]
        out: list[tuple[str, str, int, object]] = []
        # commands
        cmd_times = []
        n_cmd = int(span * self.cmd_rate)
        for i in range(n_cmd):
            t = T0 + int(round(i * 1e9 / self.cmd_rate)) + 3_000_000
            c = self.command(t)
            if c is None and not self.cmd_in_pause:
                continue
            c = np.zeros(6) if c is None else c
            cmd_times.append((t, c))
            layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
            out.append((CMD, "std_msgs/msg/Float64MultiArray", t,
                        T["std_msgs/msg/Float64MultiArray"](layout=layout, data=c.astype(np.float64))))
        ct = np.array([t for t, _ in cmd_times], np.int64)
        cv = np.array([c for _, c in cmd_times]) if cmd_times else np.zeros((0, 6))

        def velocity(t: int) -> np.ndarray:
            i = int(np.searchsorted(ct, t - LAG_NS, side="right")) - 1
            if i < 0 or self.command(int(ct[i])) is None or t - LAG_NS - ct[i] > 3e9 / self.cmd_rate:
                return np.zeros(6)
            return cv[i]

        # joint states: the driver publishes all the time
        pos = np.zeros(6)
        dt = 1.0 / self.js_rate
        for i in range(int(span * self.js_rate)):
            t = T0 + int(round(i * 1e9 / self.js_rate))
            v = velocity(t)
            pos = pos + v * dt
            msg = T["sensor_msgs/msg/JointState"](
                header=_header(t if self.header else 0), name=list(JOINTS), position=pos.copy(),
                velocity=v.copy() if self.velocity else np.zeros(0), effort=np.zeros(0))
            out.append(("/joint_states", "sensor_msgs/msg/JointState", t, msg))
        if self.joy_button is not None:
            presses = [s for s in self.take_starts] + [s + int(self.take_s * 1e9) for s in self.take_starts]
            for i in range(int(span * 20)):
                t = T0 + int(round(i * 5e7)) + 1_000_000
                buttons = [0] * 8
                if any(p <= t < p + 200_000_000 for p in presses):
                    buttons[self.joy_button] = 1
                out.append(("/joy", "sensor_msgs/msg/Joy", t, T["sensor_msgs/msg/Joy"](
                    header=_header(t), axes=np.zeros(4, np.float32), buttons=np.array(buttons, np.int32))))
        if self.multirate:
            for i in range(int(span * 10)):
                t = T0 + int(round(i * 1e8)) + 5_000_000
                layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
                out.append(("/target", "std_msgs/msg/Float64MultiArray", t, T["std_msgs/msg/Float64MultiArray"](
                    layout=layout, data=np.array([0.5 + 0.1 * math.sin(i * 0.1), -0.2, 0.3]))))
            for i in range(int(span * 50)):
                t = T0 + int(round(i * 2e7)) + 7_000_000
                stamp = t - 4_000_000  # sampled 4 ms before it arrived
                v3 = T["geometry_msgs/msg/Vector3"]
                w = T["geometry_msgs/msg/Wrench"](force=v3(x=math.sin(i * 0.05), y=0.0, z=-9.8 + 0.01 * (i % 7)),
                                                 torque=v3(x=0.0, y=0.0, z=0.0))
                out.append(("/ft", "geometry_msgs/msg/WrenchStamped", t,
                            T["geometry_msgs/msg/WrenchStamped"](header=_header(stamp), wrench=w)))
        return out

    def write(self, path: Path, storage: str = "mcap") -> Path:
        return write_bag(path, self.messages(), storage)


def lab_config(path: Path, observation: str = "readme", rate_hz: float = 50.0, **import_) -> Path:
    """The README's "Using your own robot" config for this arm (observation 'readme': joint
    positions and velocities; 'position': positions only; 'multirate': positions, /target, /ft)."""
    js = {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "joints": JOINTS}
    obs = [dict(js, field="position")]
    if observation == "readme":
        obs.append(dict(js, field="velocity"))
    if observation == "multirate":
        obs += [{"topic": "/target", "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 3},
                {"topic": "/ft", "type": "geometry_msgs/msg/WrenchStamped", "field": "wrench.force"}]
    d = {
        "task": {"env": ""},
        "rate_hz": rate_hz,
        "topics": {"command": CMD},
        "observation": obs,
        "action": [{"topic": CMD, "type": "std_msgs/msg/Float64MultiArray", "field": "data"}],
        "command": {"joints": JOINTS, "meaning": "velocity"},
        "import": {"min_episode_steps": 5, **import_},
    }
    path.write_text(yaml.safe_dump(d))
    return path
