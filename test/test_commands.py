"""Outbound command adapter (smiling_ros.io.commands) and the simulated robot's trajectory follower,
without ROS: specs from configs, the meaning check, and what each interface's command holds."""
from __future__ import annotations

import numpy as np
import pytest

from smiling_ros.config import config_from_dict
from smiling_ros.envs.follower import TrajectoryFollower
from smiling_ros.errors import UserError
from smiling_ros.io.commands import CommandBuilder, CommandSpec, TrajectoryCommand, checkpoint_action_meaning

LOW, HIGH = -np.ones(2), np.ones(2)


def cfg(**command):
    return config_from_dict({"observation": [{"topic": "/observation", "type": "std_msgs/msg/Float64MultiArray"}],
                             "command": command}, "robot.yaml")


def spec(interface="joint_trajectory", meaning="velocity", step=0.05, low=LOW, high=HIGH, ckpt_meaning="", **kw):
    c = cfg(interface=interface, meaning=meaning, joints=kw.pop("joints", ["shoulder", "elbow"]), **kw)
    return CommandSpec.resolve(c, low, high, step, checkpoint_meaning=ckpt_meaning, checkpoint="p.safetensors")


def test_forward_keeps_todays_message_and_clamps():
    b = CommandBuilder(spec("forward"))
    assert b.forward(np.array([0.5, 3.0])).data == [0.5, 1.0]
    assert spec("forward").topic == "/forward_command_controller/commands"
    with pytest.raises(UserError, match="non-finite"):
        b.forward(np.array([np.nan, 0.0]))


def test_position_chunk_becomes_points_one_step_apart_starting_one_step_ahead():
    b = CommandBuilder(spec(meaning="position", scale=[2.0]))
    chunk = np.array([[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]])
    t = b.trajectory(chunk, [0.0, 0.05, 0.1])
    assert isinstance(t, TrajectoryCommand)
    assert t.joint_names == ["shoulder", "elbow"]
    assert np.allclose(t.times_s, [0.05, 0.10, 0.15])
    assert np.allclose(t.positions, chunk * 2.0)  # scale: SI units per action unit
    assert t.velocities is None


def test_velocity_chunk_is_integrated_from_measured_positions():
    b = CommandBuilder(spec(meaning="velocity", scale=[1.5]))
    chunk = np.array([[1.0, 0.0], [1.0, -1.0]])
    q = np.array([0.3, -0.2])
    assert b.trajectory(chunk, [0.0, 0.05]) is None  # no joint positions: nothing is sent
    t = b.trajectory(chunk, [0.0, 0.05], q)
    assert np.allclose(t.times_s, [0.05, 0.1])
    assert np.allclose(t.velocities, chunk * 1.5)
    assert np.allclose(t.positions[0], q + 1.5 * chunk[0] * 0.05)
    assert np.allclose(t.positions[1], q + 1.5 * (chunk[0] + chunk[1]) * 0.05)
    # A chunk whose first action started 20 ms ago: only its remaining 30 ms are integrated.
    t2 = b.trajectory(chunk, [-0.02, 0.03], q)
    assert np.allclose(t2.times_s, [0.03, 0.08])
    assert np.allclose(t2.positions[0], q + 1.5 * chunk[0] * 0.03)


def test_points_in_the_past_are_left_out_and_times_strictly_increase():
    b = CommandBuilder(spec(meaning="position"))
    chunk = np.zeros((4, 2))
    t = b.trajectory(chunk, [-0.2, -0.15, -0.05, 0.0])
    assert np.allclose(t.times_s, [0.05])  # only the last action's point is ahead
    assert b.trajectory(chunk[:2], [-0.2, -0.15]) is None


def test_twist():
    s = spec("servo_twist", meaning="", low=-np.ones(6), high=np.ones(6), joints=[], frame_id="tool0", scale=[0.1])
    tw = CommandBuilder(s).twist(np.array([1, 0, 0, 0, 0, -1.0]))
    assert tw.frame_id == "tool0" and tw.linear == [0.1, 0.0, 0.0] and tw.angular == [0.0, 0.0, -0.1]


@pytest.mark.parametrize("interface,meaning,ckpt,match", [
    ("joint_trajectory", "effort", "", "effort actions cannot go to interface 'joint_trajectory'"),
    ("servo_twist", "", "velocity", "velocity actions cannot go to interface 'servo_twist'"),
    ("forward", "", "twist", "twist actions cannot go to interface 'forward'"),
    ("joint_trajectory", "", "", "needs the action's meaning"),
    ("forward", "position", "velocity", "actions are velocity commands but robot.yaml: command.meaning is 'position'"),
])
def test_meaning_mismatch_is_one_line(interface, meaning, ckpt, match):
    with pytest.raises(UserError, match=match) as e:
        spec(interface, meaning=meaning, ckpt_meaning=ckpt,
             low=-np.ones(6) if interface == "servo_twist" else LOW, high=np.ones(6) if interface == "servo_twist" else HIGH)
    assert "\n" not in str(e.value)


def test_joints_must_match_action_size_and_twist_needs_six():
    with pytest.raises(UserError, match="3 joints but the policy's actions have 2"):
        spec("forward", joints=["a", "b", "c"])
    with pytest.raises(UserError, match="takes 6 action values"):
        spec("servo_twist", meaning="twist", joints=[])


def test_checkpoint_meaning_from_action_spec_or_config():
    assert checkpoint_action_meaning({"action_spec": {"meaning": "position"}}) == "position"
    assert checkpoint_action_meaning({"config": {"command": {"meaning": "velocity"}}}) == "velocity"
    assert checkpoint_action_meaning({}) == "" and checkpoint_action_meaning(None) == ""


def test_follower_interpolates_reorders_and_holds():
    f = TrajectoryFollower(["a", "b"], "velocity", np.array([1.0, 1.0]), -np.ones(2) * 10, np.ones(2) * 10)
    assert f.action(0.0, 0.1, np.zeros(2)) is None
    # Joint names in another order than the follower's: reordered by name.
    why = f.set(["b", "a"], np.array([0.1, 0.2]), np.array([[2.0, 1.0], [4.0, 2.0]]), start_s=10.0, now_s=10.0,
                q_now=np.zeros(2))
    assert why is None
    assert np.allclose(f.position(10.05), [0.5, 1.0])  # halfway from the current state to point 0
    assert np.allclose(f.position(10.15), [1.5, 3.0])
    assert np.allclose(f.position(11.0), [2.0, 4.0])  # held after the last point
    assert np.allclose(f.action(10.0, 0.1, np.zeros(2)), [10.0, 10.0])  # clipped to the limits
    assert "strictly increasing" in f.set(["a", "b"], np.array([0.2, 0.2]), np.zeros((2, 2)), 10, 10, np.zeros(2))
    assert "not the controller's joints" in f.set(["a", "c"], np.array([0.2]), np.zeros((1, 2)), 10, 10, np.zeros(2))
    assert "in the past" in f.set(["a", "b"], np.array([0.2]), np.zeros((1, 2)), 5.0, 10.0, np.zeros(2))
    assert np.allclose(f.position(11.0), [2.0, 4.0])  # rejected trajectories leave the old one
