"""recorder_node marks takes: episode services and a joystick button, over real DDS. The robot
(continuous /joint_states) and the joystick are published by this test's own rclpy node; the bag
is then imported and must hold the marked takes."""
from __future__ import annotations

import json
import signal
import time

import pytest
import yaml
from conftest import requires_ros
from test_sim_recorder import Node

from smiling_ros.config import load_config
from smiling_ros.data.dataset import Dataset
from smiling_ros.io.importer import import_bag

pytestmark = [requires_ros, pytest.mark.slow]

JOINTS = ["a", "b"]


@pytest.fixture
def robot():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("test_recorder_takes", context=ctx)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def test_services_and_joy_button_mark_takes(tmp_path, ros_env, robot):
    from sensor_msgs.msg import JointState, Joy
    from std_srvs.srv import Trigger

    node, executor = robot
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "rate_hz": 20.0,
        "topics": {"episode": "/takes/episode"},
        "observation": [{"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "field": "position",
                         "joints": JOINTS}],
        "record": {"joy_topic": "/joy", "joy_button": 0, "joy_discard_button": 1},
        "import": {"min_episode_steps": 5},
    }))
    bag = tmp_path / "bag"
    rec = Node("recorder_node", {"config": str(cfg_path), "output": str(bag)}, ros_env, tmp_path)
    js_pub = node.create_publisher(JointState, "/joint_states", 10)
    joy_pub = node.create_publisher(Joy, "/joy", 10)
    clients = {name: node.create_client(Trigger, f"/recorder_node/{name}_episode")
               for name in ("start", "stop", "discard")}
    t0 = time.monotonic()

    def run_for(seconds, buttons=(0, 0)):
        """Publish joint states at 50 Hz (and the joystick's buttons at 50 Hz) for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = JointState(name=JOINTS, position=[time.monotonic() - t0, 0.5])
            js_pub.publish(msg)
            joy_pub.publish(Joy(axes=[0.0, 0.0], buttons=list(buttons)))
            executor.spin_once(timeout_sec=0.02)

    def call(name):
        future = clients[name].call_async(Trigger.Request())
        deadline = time.monotonic() + 20
        while not future.done() and time.monotonic() < deadline:
            run_for(0.02)
        assert future.done(), f"{name}_episode: no answer"
        return future.result()

    def press(button):
        run_for(0.1, buttons=(1, 0) if button == 0 else (0, 1))
        run_for(0.1)

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                all(c.service_is_ready() for c in clients.values())
                and "recording /joint_states" in rec.stderr() and "recording /joy" in rec.stderr()):
            run_for(0.1)
        assert all(c.service_is_ready() for c in clients.values()), rec.stderr()[-2000:]
        run_for(0.5)
        assert call("stop").success is False  # nothing open yet
        assert call("start").success is True  # take 0 by service
        assert call("start").success is False
        run_for(1.5)
        assert call("stop").message == "take 0 ended"
        run_for(0.5)
        press(0)  # take 1 by the joystick
        run_for(1.5)
        press(0)
        run_for(0.5)
        press(0)  # take 2, discarded with the other button
        run_for(0.8)
        press(1)
        run_for(0.5)
        assert call("start").success is True  # take 3 by service, ended by the joystick
        run_for(1.5)
        press(0)
        run_for(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(line.startswith("EPISODE") for line in rec.lines) < 8:
            run_for(0.1)
    finally:
        assert rec.stop(signal.SIGINT) == 0, rec.stderr()[-2000:]
    events = [json.loads(line[len("EPISODE "):]) for line in rec.lines if line.startswith("EPISODE ")]
    assert [(e["event"], e["episode"]) for e in events] == [
        ("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("discard", 2), ("start", 3), ("end", 3)]
    ds = import_bag(bag, load_config(cfg_path), tmp_path / "ds", progress=False, log=lambda s: None)
    assert ds.meta["episodes_from"] == "markers" and ds.num_episodes == 3 and ds.meta["discarded_takes"] == 1
    assert [e["marker_episode"] for e in ds.meta["episodes"]] == [0, 1, 3]
    assert all(n >= 25 for n in ds.meta["episode_lengths"]), ds.meta["episode_lengths"]  # >= 1.5 s at 20 Hz
    assert Dataset.load(tmp_path / "ds").num_episodes == 3
