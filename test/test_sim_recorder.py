"""sim_node and recorder_node as separate processes over real DDS (loopback), and record-demos.

Each test starts real child processes; the test process itself joins the same ROS domain
(conftest gives it one of its own) with its own rclpy context where it needs to talk to a node.
"""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import requires_ros

pytestmark = requires_ros

ARM_CFG = {
    "task": {"env": "smiling_ros/ArmReach-v0", "max_episode_steps": 6},
    "rate_hz": 20.0,
    "seed": 0,
    "topics": {"episode": "/test/episode"},
    "observation": [{"topic": "/observation", "type": "std_msgs/msg/Float64MultiArray", "field": "data"}],
    "action": [{"topic": "/forward_command_controller/commands", "type": "std_msgs/msg/Float64MultiArray",
                "field": "data"}],
}


def write_config(tmp_path, **changes):
    cfg = json.loads(json.dumps(ARM_CFG))
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Node:
    """A node module run as a child process; stdout lines collected by a thread."""

    def __init__(self, module, params, env, tmp_path):
        cmd = [sys.executable, "-m", f"smiling_ros.nodes.{module}", "--ros-args"]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"]
        self.err_path = tmp_path / f"{module}.err"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.proc.args[2]} did not finish in {timeout} s: {self.stderr()[-2000:]}")

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(2)
        self._err.close()
        return self.proc.returncode

    def stderr(self):
        return self.err_path.read_text()


def read_bag(path):
    from rosbags.highlevel import AnyReader

    from smiling_ros.io.bag import typestore

    rows = {}
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, t, raw in reader.messages():
            rows.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return types, rows


@pytest.mark.slow
def test_sim_and_recorder_over_dds(tmp_path, ros_env):
    """Expert-driven sim (faster than real time, /clock) + recorder stopped by SIGINT: the bag reads
    back with every message, exact simulated-time stamps and both episodes' markers."""
    cfg = write_config(tmp_path)
    bag = tmp_path / "bag"
    recorder = Node("recorder_node", {"config": str(cfg), "output": str(bag), "use_sim_time": True}, ros_env, tmp_path)
    sim = Node("sim_node", {"config": str(cfg), "expert": "scripted", "time_scale": 4.0, "publish_clock": True,
                            "max_episodes": 2, "wait_for_subscribers": 1}, ros_env, tmp_path)
    try:
        assert sim.wait(40) == 0, sim.stderr()
        deadline = time.monotonic() + 10
        while sum(ln.startswith("EPISODE") for ln in recorder.lines) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        sim.stop()
        assert recorder.stop(signal.SIGINT) == 0, recorder.stderr()
    summary = json.loads(next(ln for ln in recorder.lines if ln.startswith("RECORDED "))[9:])
    assert all(v == 0 for v in summary["lost"].values())

    types, rows = read_bag(bag)
    assert types == {"/observation": "std_msgs/msg/Float64MultiArray",
                     "/forward_command_controller/commands": "std_msgs/msg/Float64MultiArray",
                     "/joint_states": "sensor_msgs/msg/JointState", "/test/episode": "std_msgs/msg/String"}
    steps = 6
    assert len(rows["/observation"]) == len(rows["/joint_states"]) == 2 * (steps + 1)
    assert len(rows["/forward_command_controller/commands"]) == 2 * steps
    markers = [json.loads(m.data) for _, m in rows["/test/episode"]]
    assert [(m["event"], m["episode"]) for m in markers] == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert all(m["steps"] == steps and m["truncated"] for m in markers if m["event"] == "end")

    # Simulated time: one control period (50 ms) between observations of an episode, whatever the speed.
    t_obs = np.array([t for t, _ in rows["/observation"]])
    within = np.diff(t_obs)[np.arange(len(t_obs) - 1) != steps]
    assert np.all(within == 50_000_000)
    # Each command carries the time of the observation it answered; joint_states carry the header stamp.
    t_cmd = np.array([t for t, _ in rows["/forward_command_controller/commands"]])
    assert np.array_equal(t_cmd, np.concatenate([t_obs[:steps], t_obs[steps + 1:-1]]))
    for t, js in rows["/joint_states"]:
        assert js.header.stamp.sec * 1_000_000_000 + js.header.stamp.nanosec == t
        assert list(js.name) == ["shoulder", "elbow"]
    # Markers bracket their episode: start at its first observation, end at its last.
    t_mark = [t for t, _ in rows["/test/episode"]]
    assert t_mark == [t_obs[0], t_obs[steps], t_obs[steps + 1], t_obs[-1]]
    # The observation is the env's: joint positions match joint_states, actions are within [-1, 1].
    obs = np.array([m.data for _, m in rows["/observation"]])
    pos = np.array([m.position for _, m in rows["/joint_states"]])
    assert obs.shape == (14, 8) and np.allclose(obs[:, :2], pos)
    act = np.array([m.data for _, m in rows["/forward_command_controller/commands"]])
    assert act.shape == (12, 2) and np.all(np.abs(act) <= 1) and np.abs(act).max() > 0.1


@pytest.fixture
def ros_node():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("test_sim_recorder", context=ctx)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def spin_until(executor, cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return cond()


def test_lockstep_one_step_per_command_and_reset(tmp_path, ros_env, ros_node):
    from std_msgs.msg import Float64MultiArray, String
    from std_srvs.srv import Trigger

    from smiling_ros.ros.qos import EVENTS, SENSOR

    node, executor = ros_node
    cfg = write_config(tmp_path)
    sim = Node("sim_node", {"config": str(cfg), "mode": "lockstep"}, ros_env, tmp_path)
    try:
        obs, markers = [], []
        node.create_subscription(Float64MultiArray, "/observation", lambda m: obs.append(np.array(m.data)), SENSOR)
        node.create_subscription(String, "/test/episode", lambda m: markers.append(json.loads(m.data)), EVENTS)
        pub = node.create_publisher(Float64MultiArray, "/forward_command_controller/commands", 10)
        reset = node.create_client(Trigger, "/sim_node/reset")
        assert spin_until(executor, lambda: reset.service_is_ready() and pub.get_subscription_count() > 0, 20)

        def call_reset():
            future = reset.call_async(Trigger.Request())
            assert spin_until(executor, future.done, 10)
            return future.result()

        res = call_reset()
        assert res.success
        info = json.loads(res.message)
        assert spin_until(executor, lambda: len(obs) >= 1 and np.allclose(obs[-1], info["observation"]), 10)
        n0 = len(obs)
        for k in range(3):
            pub.publish(Float64MultiArray(data=[1.0, -1.0]))
            assert spin_until(executor, lambda: len(obs) == n0 + k + 1, 10)
        assert obs[-1][2] > 0 and obs[-1][3] < 0  # the command moved the joints
        # Wrong size and NaN are ignored: no step, no observation.
        pub.publish(Float64MultiArray(data=[1.0, 0.0, 0.0]))
        pub.publish(Float64MultiArray(data=[float("nan"), 0.0]))
        spin_until(executor, lambda: False, 0.5)
        assert len(obs) == n0 + 3
        # Finish the episode (6 steps); then commands wait for a reset.
        for k in range(3, 7):
            pub.publish(Float64MultiArray(data=[0.0, 0.0]))
            spin_until(executor, lambda: len(obs) == n0 + min(k + 1, 6), 5)
        spin_until(executor, lambda: False, 0.3)
        assert len(obs) == n0 + 6
        assert spin_until(executor, lambda: any(m["event"] == "end" and m["episode"] == info["episode"]
                                                 for m in markers), 5)
        res2 = call_reset()
        assert json.loads(res2.message)["episode"] == info["episode"] + 1
        assert spin_until(executor, lambda: any(m["event"] == "start" and m["episode"] == info["episode"] + 1
                                                 for m in markers), 5)
        ends = [m for m in markers if m["event"] == "end" and m["episode"] == info["episode"]]
        assert ends[0]["steps"] == 6 and ends[0]["reason"] == "done"
        err = sim.stderr()
        assert "expected 2; ignored" in err and "NaN" in err
    finally:
        assert sim.stop(signal.SIGTERM) == 0, sim.stderr()


def test_sim_node_bad_parameter_is_one_line(tmp_path, ros_env):
    sim = Node("sim_node", {"config": "arm_reach", "mode": "sideways"}, ros_env, tmp_path)
    assert sim.wait(30) == 2
    sim.stop()
    err = sim.stderr().strip().splitlines()
    assert err[-1].startswith("sim_node: error: parameter 'mode'") and "Traceback" not in sim.stderr()


def run_cli(*args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "smiling_ros.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_record_demos_end_to_end(tmp_path, ros_env):
    from smiling_ros.commands.record_demos import summarize_bag

    cfg = write_config(tmp_path, task={"env": "smiling_ros/ArmReach-v0", "max_episode_steps": 40})
    out = tmp_path / "demos"
    t0 = time.monotonic()
    res = run_cli("record-demos", "--config", str(cfg), "--episodes", "3", "--out", str(out), "--storage", "sqlite3",
                  "--time-scale", "10", env=ros_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.monotonic() - t0 < 30
    assert "recorded 3 episodes" in res.stdout
    assert list(out.glob("*.db3"))
    summary = summarize_bag(out, "/test/episode")
    assert summary["episodes"] == 3 and summary["successes"] >= 2
    assert summary["counts"]["/observation"] == 3 * 41
    assert summary["counts"]["/forward_command_controller/commands"] == 3 * 40
    # The output exists now: a second run refuses to overwrite it, with one line and status 2.
    res = run_cli("record-demos", "--config", str(cfg), "--episodes", "1", "--out", str(out), env=ros_env)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "already exists" in res.stderr


def test_record_demos_bad_input(tmp_path, ros_env):
    res = run_cli("record-demos", "--config", "hopper", "--episodes", "1", "--out", str(tmp_path / "x"), env=ros_env)
    assert res.returncode == 2 and "no scripted expert" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("record-demos", "--config", str(tmp_path / "none.yaml"), "--episodes", "1", "--out",
                  str(tmp_path / "y"), env=ros_env)
    assert res.returncode == 2 and "config file not found" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_realtime_holds_last_command_and_resets(tmp_path, ros_env, ros_node):
    from std_msgs.msg import Float64MultiArray, String
    from std_srvs.srv import Trigger

    from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

    node, executor = ros_node
    cfg = write_config(tmp_path, task={"env": "smiling_ros/ArmReach-v0", "max_episode_steps": 1000})
    sim = Node("sim_node", {"config": str(cfg), "rate_hz": 50.0}, ros_env, tmp_path)
    try:
        obs, markers = [], []
        node.create_subscription(Float64MultiArray, "/observation", lambda m: obs.append(np.array(m.data)), SENSOR)
        node.create_subscription(String, "/test/episode", lambda m: markers.append(json.loads(m.data)), EVENTS)
        pub = node.create_publisher(Float64MultiArray, "/forward_command_controller/commands", COMMAND)
        reset = node.create_client(Trigger, "/sim_node/reset")
        assert spin_until(executor, lambda: len(obs) > 3 and reset.service_is_ready(), 20)
        assert np.allclose(obs[-1][2:4], 0, atol=0.05)  # no command yet: zero velocity
        pub.publish(Float64MultiArray(data=[0.4, -0.4]))  # one command, held at every tick
        n = len(obs)
        assert spin_until(executor, lambda: len(obs) > n + 10, 10)
        held = np.array(obs[n + 5:])
        assert np.allclose(held[:, 2], 0.6, atol=0.05) and np.allclose(held[:, 3], -0.6, atol=0.05)
        future = reset.call_async(Trigger.Request())
        assert spin_until(executor, future.done, 10) and future.result().success
        episode = json.loads(future.result().message)["episode"]
        assert spin_until(executor, lambda: any(m["event"] == "start" and m["episode"] == episode for m in markers), 5)
        end = [m for m in markers if m["event"] == "end"]
        assert end and end[-1]["episode"] == episode - 1 and end[-1]["reason"] == "reset"
        n = len(obs)
        assert spin_until(executor, lambda: len(obs) > n + 5, 10)
        assert np.allclose(obs[-1][2:4], 0, atol=0.05)  # the held command is cleared by a reset
    finally:
        assert sim.stop(signal.SIGINT) == 0, sim.stderr()


def test_message_classes_and_markers():
    from smiling_ros.data.episodes import parse_marker_text as parse_episode_marker
    from smiling_ros.errors import UserError
    from smiling_ros.ros.msgs import episode_marker, message_class

    assert message_class("sensor_msgs/msg/JointState").__name__ == "JointState"
    assert message_class("std_msgs/Float64MultiArray").__name__ == "Float64MultiArray"
    for bad, words in (("no_such_pkg/msg/X", "not installed"), ("std_msgs/msg/NoSuch", "has no msg"),
                       ("JointState", "expected")):
        with pytest.raises(UserError, match=words):
            message_class(bad)
    m = parse_episode_marker(episode_marker("end", 3, success=True).data)
    assert m == {"event": "end", "episode": 3, "success": True}
    assert parse_episode_marker("not json") is None and parse_episode_marker('{"event": "x"}') is None


def test_sim_time_stamper_orders_by_source_time():
    from smiling_ros.nodes.recorder_node import SimTimeStamper

    class Sink:
        def __init__(self):
            self.rows = []

        def write(self, topic, t, data):
            self.rows.append((topic, t, data))

    sink = Sink()
    st = SimTimeStamper(sink)
    st.clock(1000, source_ns=10)
    st.add("/obs", 12, b"a")  # published after clock 1000 (at wall 10): waits for the next /clock
    st.add("/cmd", 21, b"b")  # arrives before the /clock it follows
    assert sink.rows == []
    st.clock(2000, source_ns=20)
    assert sink.rows == [("/obs", 1000, b"a")]
    st.clock(3000, source_ns=30)
    assert sink.rows[-1] == ("/cmd", 2000, b"b")
    st.add("/obs", 35, b"c")
    st.flush(None)  # closing: everything goes out with the last known time
    assert sink.rows[-1] == ("/obs", 3000, b"c")
