"""Command interfaces over real DDS.

A joint_trajectory_controller stand-in written here without the project's code (rclpy and the
message packages only) sits between controller_node and sim_node: it takes the controller's
JointTrajectory stream, checks every message as a JTC would need it (joint names and order,
header stamp zero, strictly increasing time_from_start, first point in the future, finite values
within the joint and velocity limits), follows the trajectory (linear interpolation from the
current position at receipt, velocity feed-forward plus position feedback) and drives the
simulated arm through its forward velocity command topic. The arm task must still succeed.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from conftest import requires_ros
from test_controller_sim import clone_expert

pytestmark = [requires_ros, pytest.mark.slow]

JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
JOINTS = ["shoulder", "elbow"]
JOINT_RANGE = np.array([[-2.8, 2.8], [-2.95, 2.95]])  # sim/arm_reach.xml
MAX_VEL = 1.5  # rad/s for a forward command of 1.0 (the task's velocity servos)


def arm_config(tmp_path, **controller) -> str:
    """arm_reach with these controller settings (safety settings are read from the config only)."""
    from smiling_ros.config import resolve_config_path

    data = yaml.safe_load(resolve_config_path("arm_reach").read_text())
    data["controller"].update(controller)
    p = tmp_path / "arm.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def trajectory_config(tmp_path, **controller) -> str:
    from smiling_ros.config import resolve_config_path

    data = yaml.safe_load(resolve_config_path("arm_reach").read_text())
    data["command"] = {"interface": "joint_trajectory", "topic": JTC_TOPIC, "joints": JOINTS,
                       "meaning": "velocity", "scale": [MAX_VEL, MAX_VEL]}
    data["controller"].update(controller)
    p = tmp_path / "arm_jtc.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


class IndependentJtc:
    """Subscribes to a JointTrajectory topic, checks each message, follows it at 100 Hz."""

    def __init__(self, ctx):
        import rclpy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.node = rclpy.create_node("independent_jtc", context=ctx)
        qos_cmd = rclpy.qos.QoSProfile(depth=1, reliability=rclpy.qos.ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(JointTrajectory, JTC_TOPIC, self.on_trajectory, qos_cmd)
        self.node.create_subscription(JointState, "/joint_states", self.on_joint_state,
                                      rclpy.qos.qos_profile_sensor_data)
        self.pub = self.node.create_publisher(Float64MultiArray, "/forward_command_controller/commands", qos_cmd)
        self.Float64MultiArray = Float64MultiArray
        self.lock = threading.Lock()
        self.q = None
        self.active = None  # (times [s, monotonic], positions (n+1, 2))
        self.messages = 0
        self.violations: list[str] = []
        self.sent: list[np.ndarray] = []

    def on_joint_state(self, msg):
        idx = [list(msg.name).index(j) for j in JOINTS]
        with self.lock:
            self.q = np.array([msg.position[i] for i in idx])

    def on_trajectory(self, msg):
        now = time.monotonic()
        bad = []
        if list(msg.joint_names) != JOINTS:
            bad.append(f"joint_names {list(msg.joint_names)}")
        if msg.header.stamp.sec or msg.header.stamp.nanosec:
            bad.append("header stamp not zero")
        t = np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points])
        if len(t) == 0:
            bad.append("no points")
        elif t[0] <= 0:
            bad.append(f"first point not in the future ({t[0]} s)")
        if np.any(np.diff(t) <= 0):
            bad.append(f"time_from_start not strictly increasing {t.tolist()}")
        pos = np.array([list(p.positions) for p in msg.points], dtype=float)
        vel = np.array([list(p.velocities) for p in msg.points], dtype=float)
        if pos.shape != (len(t), 2) or not np.all(np.isfinite(pos)):
            bad.append(f"positions {pos.tolist()}")
        elif np.any(pos < JOINT_RANGE[:, 0]) or np.any(pos > JOINT_RANGE[:, 1]):
            bad.append(f"position outside the joint range {pos.tolist()}")
        if vel.size and (vel.shape != pos.shape or not np.all(np.isfinite(vel)) or np.any(np.abs(vel) > MAX_VEL + 1e-9)):
            bad.append(f"velocities {vel.tolist()}")
        with self.lock:
            self.messages += 1
            if bad:
                self.violations.extend(bad)
                return
            if self.q is None:
                return
            self.active = (np.concatenate([[now], now + t]), np.vstack([self.q[None], pos]))

    def follow(self):
        """One control cycle: desired position and velocity from the trajectory, command to the arm."""
        now = time.monotonic()
        with self.lock:
            active, q = self.active, self.q
        if active is None or q is None:
            return
        ts, ps = active
        if now >= ts[-1]:
            p_des, v_ff = ps[-1], np.zeros(2)
        else:
            i = max(0, int(np.searchsorted(ts, now, side="right")) - 1)
            w = (now - ts[i]) / (ts[i + 1] - ts[i])
            p_des = ps[i] + w * (ps[i + 1] - ps[i])
            v_ff = (ps[i + 1] - ps[i]) / (ts[i + 1] - ts[i])
        v = v_ff + 5.0 * (p_des - q)
        cmd = np.clip(v / MAX_VEL, -1.0, 1.0)
        self.sent.append(cmd)
        self.pub.publish(self.Float64MultiArray(data=cmd.tolist()))


def run_arm(tmp_path, ros_env, controller_params, episodes=2):
    """sim_node (forward velocity commands) + controller_node + the independent JTC in this process."""
    import rclpy
    from std_msgs.msg import String

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    jtc = IndependentJtc(ctx)
    ends = []
    jtc.node.create_subscription(
        String, "/smiling_ros/episode", lambda m: ends.append(__import__("json").loads(m.data)),
        rclpy.qos.QoSProfile(depth=10, reliability=rclpy.qos.ReliabilityPolicy.RELIABLE,
                             durability=rclpy.qos.DurabilityPolicy.TRANSIENT_LOCAL))
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(jtc.node)
    running = True

    def spin():
        while running:
            executor.spin_once(timeout_sec=0.01)

    def control():
        nxt = time.monotonic()
        while running:
            jtc.follow()
            nxt += 0.01
            time.sleep(max(0.0, nxt - time.monotonic()))

    threads = [threading.Thread(target=spin, daemon=True), threading.Thread(target=control, daemon=True)]
    for t in threads:
        t.start()
    logs = {k: open(tmp_path / f"{k}.log", "w") for k in ("sim", "ctl")}
    ctl = subprocess.Popen([sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args",
                            *sum((["-p", p] for p in controller_params), [])],
                           env=ros_env, stdout=logs["ctl"], stderr=subprocess.STDOUT)
    sim = subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.sim_node", "--ros-args", "-p", "config:=arm_reach",
         "-p", "mode:=realtime", "-p", f"max_episodes:={episodes}", "-p", "wait_for_subscribers:=1",
         "-p", "seed:=7"], env=ros_env, stdout=logs["sim"], stderr=subprocess.STDOUT)
    try:
        assert sim.wait(120) == 0, (tmp_path / "sim.log").read_text()
        deadline = time.monotonic() + 5
        while len([e for e in ends if e.get("event") == "end"]) < episodes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ctl.send_signal(signal.SIGINT)
        try:
            ctl_rc = ctl.wait(15)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl_rc = None
        running = False
        for t in threads:
            t.join(2)
        jtc.node.destroy_node()
        ctx.try_shutdown()
    return jtc, [e for e in ends if e.get("event") == "end"], ctl_rc


def test_independent_jtc_drives_the_arm_to_its_target(tmp_path, ros_env):
    ckpt = tmp_path / "bc.safetensors"
    clone_expert(ckpt)
    cfg = trajectory_config(tmp_path, watchdog_periods=3)
    jtc, done, ctl_rc = run_arm(tmp_path, ros_env, [f"config:={cfg}", f"checkpoint:={ckpt}"])
    log = (tmp_path / "ctl.log").read_text()
    assert jtc.violations == [], jtc.violations[:5]
    assert jtc.messages > 100, (jtc.messages, log)
    assert len(done) == 2 and all(e["steps"] == 100 for e in done), done
    assert sum(e["success"] for e in done) >= 1, (done, log)
    assert ctl_rc == 0 and "Traceback" not in log and "joint_trajectory" in log


# --------------------------------------------------------------------------- chunked vs single action
TIME_SCALE = 2.0  # sim and policy at 2 x 20 Hz: an episode takes 2.5 s


def train_chunked_bridger(path, bc_path, chunk=4) -> None:
    """A BRIDGER policy planning ``chunk`` actions per step, refining the cloned expert (seconds)."""
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.data.evaluation import run_episodes
    from smiling_ros.envs import ARM_REACH, ScriptedExpert, make_env
    from smiling_ros.learn.checkpoint import load_checkpoint
    from smiling_ros.learn.policy import load_policy
    from smiling_ros.methods.bridger.sources import PolicySource
    from smiling_ros.methods.bridger.train import BridgerConfig, train_bridger

    env = make_env(ARM_REACH, seed=0)
    eps = run_episodes(ScriptedExpert(seed=0, mode="left"), env, 20, seed=0, record=True)
    env.close()
    ds = Dataset.from_episodes([(e["obs"], e["act"]) for e in eps], {"task": ARM_REACH})
    src = PolicySource(load_policy(str(bc_path), device="cpu"), load_checkpoint(bc_path))
    sec = BridgerConfig(chunk=chunk, train_steps=600, hidden=[64, 64], batch_size=128, steps=2, log_every=100)
    pol = train_bridger(ds, src, sec, -np.ones(2, np.float32), np.ones(2, np.float32), progress=False)
    pol.save(path, {"task": ARM_REACH})


def run_forward(tmp_path, ros_env, name, controller_params, episodes=2, sim_config="arm_reach", time_scale=TIME_SCALE):
    """controller_node -> sim_node (forward commands, or the interface of ``sim_config``); returns
    (episode ends, forward commands seen, controller log)."""
    import rclpy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from smiling_ros.data.episodes import parse_marker_text as parse_episode_marker
    from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(f"stream_test_{name}", context=ctx)
    ends, commands = [], []
    node.create_subscription(String, "/smiling_ros/episode", lambda m: ends.append(parse_episode_marker(m.data)),
                             EVENTS)
    node.create_subscription(Float64MultiArray, "/forward_command_controller/commands",
                             lambda m: commands.append(np.array(m.data)), COMMAND)
    node.create_subscription(JointState, "/joint_states", lambda m: None, SENSOR)  # sim_node waits for one
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    running = True

    def spin():
        while running:
            executor.spin_once(timeout_sec=0.01)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    log_path = tmp_path / f"ctl_{name}.log"
    ctl = subprocess.Popen([sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args",
                            *sum((["-p", p] for p in controller_params), [])],
                           env=ros_env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    sim = subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.sim_node", "--ros-args", "-p", f"config:={sim_config}",
         "-p", "mode:=realtime", "-p", f"time_scale:={time_scale}", "-p", f"max_episodes:={episodes}",
         "-p", "wait_for_subscribers:=1", "-p", "seed:=7"],
        env=ros_env, stdout=open(tmp_path / f"sim_{name}.log", "w"), stderr=subprocess.STDOUT)
    try:
        assert sim.wait(120) == 0, (tmp_path / f"sim_{name}.log").read_text()
        deadline = time.monotonic() + 5
        while len([e for e in ends if e and e["event"] == "end"]) < episodes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ctl.send_signal(signal.SIGINT)
        try:
            ctl.wait(15)
        except subprocess.TimeoutExpired:
            ctl.kill()
        running = False
        spinner.join(2)
        node.destroy_node()
        ctx.try_shutdown()
    return [e for e in ends if e and e["event"] == "end"], commands, log_path.read_text()


def max_step(commands) -> float:
    a = np.array(commands)
    return float(np.abs(np.diff(a, axis=0)).max())


def max_jerk(commands) -> float:
    a = np.array(commands)
    return float(np.abs(np.diff(a, n=2, axis=0)).max())


def test_chunked_stream_succeeds_like_single_actions_with_smaller_command_steps(tmp_path, ros_env):
    bc, chunked = tmp_path / "bc.safetensors", tmp_path / "bridger_chunk4.safetensors"
    clone_expert(bc)
    train_chunked_bridger(chunked, bc)
    rate = 20.0 * TIME_SCALE
    # the sim runs TIME_SCALE times faster: one policy step is still one training step
    common = [f"config:={arm_config(tmp_path, watchdog_periods=3)}", f"control_rate_hz:={rate}",
              "allow_rate_mismatch:=true"]
    single_ends, single_cmds, _ = run_forward(tmp_path, ros_env, "single", [f"checkpoint:={bc}", *common])
    chunk_ends, chunk_cmds, log = run_forward(
        tmp_path, ros_env, "chunked",
        [f"checkpoint:={chunked}", *common, f"command_rate_hz:={5 * rate}", "chunk_blend:=ensemble"])
    for ends in (single_ends, chunk_ends):
        assert len(ends) == 2 and all(e["steps"] == 100 for e in ends), ends
    assert sum(e["success"] for e in single_ends) >= 1, single_ends
    assert sum(e["success"] for e in chunk_ends) >= sum(e["success"] for e in single_ends), (chunk_ends, log)
    assert "commands streamed at 200 Hz (ensemble)" in log and "Traceback" not in log
    # Five commands per policy step, interpolated: the stream moves in smaller steps.
    assert len(chunk_cmds) > 3 * len(single_cmds) > 300
    assert all(np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a)) for a in chunk_cmds)
    assert max_step(chunk_cmds) < max_step(single_cmds), (max_step(chunk_cmds), max_step(single_cmds))
    # ... and changes its steps less abruptly (second difference per command: a jerk proxy).
    assert max_jerk(chunk_cmds) < max_jerk(single_cmds), (max_jerk(chunk_cmds), max_jerk(single_cmds))


def test_sim_node_follows_a_streamed_trajectory_to_the_target(tmp_path, ros_env):
    """The same trajectory interface on the robot side: sim_node's JTC-like follower takes the
    controller's trajectory stream (chunked policy at 20 Hz, trajectories re-sent at 50 Hz)."""
    bc, chunked = tmp_path / "bc.safetensors", tmp_path / "bridger_chunk4.safetensors"
    clone_expert(bc)
    train_chunked_bridger(chunked, bc)
    cfg = trajectory_config(tmp_path, watchdog_periods=3)
    ends, _, log = run_forward(
        tmp_path, ros_env, "jtc_stream",
        [f"config:={cfg}", f"checkpoint:={chunked}", "command_rate_hz:=50.0",
         "chunk_blend:=replace"], sim_config=cfg, time_scale=1.0)
    assert len(ends) == 2 and all(e["steps"] == 100 for e in ends), ends
    assert sum(e["success"] for e in ends) >= 1, (ends, log)
    assert "(joint_trajectory, velocity)" in log and "commands streamed at 50 Hz (replace)" in log
    sim_log = (tmp_path / "sim_jtc_stream.log").read_text()
    assert "trajectory rejected" not in sim_log and "Traceback" not in sim_log
