"""controller_node drives sim_node (the own ArmReach task) over real DDS and the task succeeds.

Three processes: sim_node (MuJoCo, real time), controller_node (a policy cloned here from the
scripted expert, one side of the post) and this test, which only listens to episode markers and
commands. Policy training is a few hundred gradient steps on 20 expert episodes (seconds).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import requires_ros

pytestmark = [requires_ros, pytest.mark.slow]

TIME_SCALE = 2.0  # sim and controller both at 2 x 20 Hz, so an episode takes 2.5 s


def clone_expert(path) -> None:
    """Behavioural cloning of the scripted expert (always passing left) into an mlp_policy file."""
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.envs import ARM_REACH, ScriptedExpert, make_env
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    env = make_env(ARM_REACH, seed=0)
    expert = ScriptedExpert(seed=0, mode="left")
    obs, act = [], []
    for ep in range(20):
        o, _ = env.reset(seed=ep)
        expert.reset(o)
        done = False
        while not done:
            a = expert.act(o)
            obs.append(o)
            act.append(a)
            o, _, term, trunc, _ = env.step(a)
            done = term or trunc
    o_t, a_t = torch.as_tensor(np.array(obs, np.float32)), torch.as_tensor(np.array(act, np.float32))
    torch.manual_seed(0)
    actor = MlpActor(8, 2, [64, 64])
    policy = MlpPolicy(actor, Normalizer.fit(o_t.numpy()), -np.ones(2), np.ones(2))
    opt = torch.optim.Adam(actor.parameters(), 3e-3)
    for _ in range(400):
        idx = torch.randint(0, len(o_t), (256,))
        loss = ((policy.forward(o_t[idx]) - a_t[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.save(path, {"task": ARM_REACH})


def test_controller_drives_sim_node_to_success(tmp_path, ros_env):
    import rclpy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from smiling_ros.data.episodes import parse_marker_text as parse_episode_marker
    from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

    ckpt = tmp_path / "bc.safetensors"
    clone_expert(ckpt)
    rate = 20.0 * TIME_SCALE
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("controller_sim_test", context=ctx)
    ends, commands = [], []
    node.create_subscription(String, "/smiling_ros/episode",
                             lambda m: ends.append(parse_episode_marker(m.data)), EVENTS)
    node.create_subscription(JointState, "/joint_states", lambda m: None, SENSOR)
    node.create_subscription(Float64MultiArray, "/forward_command_controller/commands",
                             lambda m: commands.append(np.array(m.data)), COMMAND)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    running = True

    def spin():
        while running:
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    logs = {k: open(tmp_path / f"{k}.log", "w") for k in ("sim", "ctl")}
    # The robot config with a more tolerant watchdog for a loaded machine (a safety setting: config only).
    import yaml

    from smiling_ros.config import resolve_config_path

    robot = yaml.safe_load(resolve_config_path("arm_reach").read_text())
    robot["controller"]["watchdog_periods"] = 3
    (tmp_path / "robot.yaml").write_text(yaml.safe_dump(robot))
    ctl = subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args", "-p",
         f"config:={tmp_path / 'robot.yaml'}", "-p", f"checkpoint:={ckpt}", "-p", f"control_rate_hz:={rate}"],
        env=ros_env, stdout=logs["ctl"], stderr=subprocess.STDOUT)
    sim = subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.sim_node", "--ros-args", "-p", "config:=arm_reach",
         "-p", "mode:=realtime", "-p", f"time_scale:={TIME_SCALE}", "-p", "max_episodes:=2",
         "-p", "wait_for_subscribers:=1", "-p", "seed:=7"],
        env=ros_env, stdout=logs["sim"], stderr=subprocess.STDOUT)
    try:
        assert sim.wait(90) == 0, (tmp_path / "sim.log").read_text()
        deadline = time.monotonic() + 5
        while len([e for e in ends if e and e["event"] == "end"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ctl.send_signal(signal.SIGINT)
        try:
            ctl_rc = ctl.wait(15)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl_rc = None
        running = False
        spinner.join(2)
        node.destroy_node()
        ctx.try_shutdown()
    done = [e for e in ends if e and e["event"] == "end"]
    assert len(done) == 2, ends
    assert all(e["steps"] == 100 for e in done), done
    assert sum(e["success"] for e in done) >= 1, (done, (tmp_path / "ctl.log").read_text())
    assert len(commands) > 100 and all(np.all(np.abs(a) <= 1.0) and a.shape == (2,) for a in commands)
    assert ctl_rc == 0
    log = (tmp_path / "ctl.log").read_text()
    assert "Traceback" not in log and "configured:" in log
