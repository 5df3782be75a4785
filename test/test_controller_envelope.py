"""The safety envelope (smiling_ros/control/envelope.py) and the checks of a checkpoint's training
spec against the robot config (smiling_ros/control/checks.py), without ROS."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smiling_ros.control import SafetyEnvelope, check_spec, load_controller_policy, make_envelope, resolve_settings
from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import load_checkpoint, robot_spec
from smiling_ros.learn.policy import MlpActor, MlpPolicy

MS = 1_000_000
P = 4 * MS  # 250 Hz
FINITE = st.floats(-10, 10)


# --------------------------------------------------------------------------- envelope
STEPS = st.lists(st.tuples(st.integers(0, 5 * P), st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                                           min_size=3, max_size=3),
                           st.lists(FINITE, min_size=3, max_size=3), st.booleans()), max_size=40)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS, lo=st.floats(-3, 0), width=st.floats(0.0, 4), rate=st.floats(0.01, 100),
       ramp=st.integers(0, 6), position=st.booleans(), error=st.one_of(st.none(), st.floats(0.01, 2)))
def test_no_command_leaves_the_envelope(steps, lo, width, rate, ramp, position, error):
    low, high = np.full(3, lo), np.full(3, lo + width)
    env = SafetyEnvelope(low, high, P, max_rate=[rate], ramp_in_s=ramp * P / 1e9,
                         max_error=[error] if (error is not None and position) else None, position=position)
    t, prev, prev_t = 0, None, None
    env.restart(t)
    for dt, action, measured, restart in steps:
        t += dt
        if restart:
            env.restart(t)
            prev = None
        m = np.asarray(measured)
        cmd = env.apply(action, t, m if position else None)
        if not np.all(np.isfinite(action)):
            assert cmd is None
            continue
        assert cmd is not None and np.all(np.isfinite(cmd))
        assert np.all(cmd >= low) and np.all(cmd <= high)
        windowed = position and error is not None
        if windowed and np.all((m >= low) & (m <= high)):
            assert np.all(np.abs(cmd - m) <= error + 1e-9)
        if not windowed:
            if prev is None:  # first command after a restart: one period from the origin
                origin = np.clip(m if position else np.zeros(3), low, high)
                assert np.all(np.abs(cmd - origin) <= rate * P / 1e9 + 1e-9)
            else:
                assert np.all(np.abs(cmd - prev) <= rate * (t - prev_t) / 1e9 + 1e-9)
        prev, prev_t = cmd, t


def test_ramp_blends_from_rest_or_the_measured_position():
    vel = SafetyEnvelope([-1, -1], [1, 1], P, ramp_in_s=4 * P / 1e9)
    vel.restart(0)
    got = [vel.apply([1.0, -0.5], k * P)[0] for k in range(6)]
    np.testing.assert_allclose(got, [0.25, 0.5, 0.75, 1, 1, 1])
    pos = SafetyEnvelope([-3, -3], [3, 3], P, ramp_in_s=2 * P / 1e9, position=True)
    pos.restart(0)
    got = [pos.apply([1.0, 1.0], k * P, measured=[0.5, -1.0]).tolist() for k in range(3)]
    np.testing.assert_allclose(got, [[0.75, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert pos.apply([1.0, 1.0], 4 * P) is None  # position ramp without the measured position: nothing
    assert pos.apply([np.nan, 1.0], 4 * P, measured=[0, 0]) is None


def test_rate_limit_and_distance_window():
    env = SafetyEnvelope([-2], [2], P, max_rate=[1.0])  # 1 unit/s: 4 mU per 4 ms period
    env.restart(0)
    np.testing.assert_allclose(env.apply([2.0], 0), [0.004])  # from rest, one period
    np.testing.assert_allclose(env.apply([2.0], 10 * MS), [0.014])
    np.testing.assert_allclose(env.apply([-2.0], 11 * MS), [0.013])
    assert env.limited == 3
    win = SafetyEnvelope([-2], [2], P, max_error=[0.1], position=True)
    np.testing.assert_allclose(win.apply([1.5], 0, measured=[1.0]), [1.1])
    np.testing.assert_allclose(win.apply([1.05], P, measured=[1.0]), [1.05])
    with pytest.raises(UserError, match="controller.max_rate: 2 values for 3 command elements"):
        SafetyEnvelope([0, 0, 0], [1, 1, 1], P, max_rate=[1, 2])
    with pytest.raises(UserError, match="controller.max_position_error: every value must be finite and > 0"):
        SafetyEnvelope([0], [1], P, max_error=[0.0], position=True)


# --------------------------------------------------------------------------- spec checks
JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint"]


def robot_config(d, joints=JOINTS, command_joints=JOINTS, meaning="velocity", rate=100.0, controller=None, name="r"):
    data = {
        "rate_hz": rate,
        "observation": [{"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "field": "position",
                         "joints": list(joints)},
                        {"topic": "/target_pose", "type": "geometry_msgs/msg/PoseStamped", "field": "pose.position"}],
        "action": [{"topic": "/forward_velocity_controller/commands", "field": "data"}],
        "limits": {"action_low": [-1.0] * 3, "action_high": [1.0] * 3},
        "command": {"joints": list(command_joints), "meaning": meaning},
        "controller": controller or {},
    }
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def trained_policy(d, cfg_path, dataset=None):
    """A checkpoint whose meta holds its training config (as every training command writes it)."""
    from smiling_ros.config import load_config

    pol = MlpPolicy(MlpActor(6, 3, [8]), Normalizer.identity(6), -np.ones(3), np.ones(3),
                    {"config": load_config(cfg_path).to_dict(), **({"dataset": dataset} if dataset else {})})
    return str(pol.save(d / "p.safetensors"))


def test_checkpoints_carry_the_training_spec(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "meta.json").write_text(json.dumps({  # the keys import-bag writes
        "rate_hz": 100.0, "source": {"start_ns": 0, "end_ns": 2_000_000_000, "topics": {
            "/joint_states": {"type": "sensor_msgs/msg/JointState", "count": 1001},
            "/target_pose": {"type": "geometry_msgs/msg/PoseStamped", "count": 21}}}}))
    path = trained_policy(tmp_path, robot_config(tmp_path), dataset={"path": str(ds)})
    spec = load_checkpoint(path).meta["spec"]
    assert spec["observation"][0]["joints"] == JOINTS and spec["observation"][1]["field"] == "pose.position"
    assert spec["action"] == {"joints": JOINTS, "meaning": "velocity", "interface": "forward"}
    assert spec["rate_hz"] == 100.0
    assert spec["topic_rates_hz"] == pytest.approx({"/joint_states": 500.0, "/target_pose": 10.0})
    assert robot_spec({"observation": [], "rate_hz": 20.0})["topic_rates_hz"] == {}


@pytest.mark.parametrize("change,params,match", [
    ({"joints": list(reversed(JOINTS))}, {}, "joints .* in the checkpoint, .* in the config \\(same joints, "
                                             "another order\\)"),
    ({"joints": ["a", "b", "c"]}, {}, "observation field 0 \\(/joint_states:position\\): joints"),
    ({"command_joints": [JOINTS[1], JOINTS[0], JOINTS[2]]}, {}, "command joints .* another order"),
    ({"meaning": "position"}, {}, "actions are velocity commands in the checkpoint, .* command.meaning 'position'"),
    ({}, {"control_rate_hz": 250.0}, "trained at 100 Hz, control_rate_hz is 250 Hz .* allow_rate_mismatch:=true"),
    ({"rate": 250.0}, {}, "trained at 100 Hz, control_rate_hz is 250 Hz"),
])
def test_a_checkpoint_trained_on_something_else_is_refused_with_one_line(tmp_path, change, params, match):
    ckpt = trained_policy(tmp_path, robot_config(tmp_path, name="trained"))
    s = resolve_settings(str(robot_config(tmp_path, **change)), ckpt, params)
    with pytest.raises(UserError, match=match) as exc:
        load_controller_policy(ckpt, s, None)
    assert "\n" not in str(exc.value)


def test_same_spec_or_allowed_rate_mismatch_is_accepted(tmp_path):
    ckpt = trained_policy(tmp_path, robot_config(tmp_path, name="trained"))
    robot = str(robot_config(tmp_path))
    assert load_controller_policy(ckpt, resolve_settings(robot, ckpt, {}), None).obs_dim == 6
    load_controller_policy(ckpt, resolve_settings(robot, ckpt, {"control_rate_hz": 104.0}), None)  # within 5 %
    s = resolve_settings(robot, ckpt, {"control_rate_hz": 250.0, "allow_rate_mismatch": True})
    assert check_spec(load_controller_policy(ckpt, s, None), ckpt, s) is None


def test_position_envelope_needs_the_measured_command_joints(tmp_path):
    ckpt = trained_policy(tmp_path, robot_config(tmp_path, meaning="position", name="trained"))
    ok = resolve_settings(str(robot_config(tmp_path, meaning="position", controller={
        "ramp_in_s": 0.5, "max_position_error": [0.1], "stop_action": "none"})), ckpt, {})
    env, index = make_envelope(ok, -np.ones(3), np.ones(3))
    assert env.position and index.tolist() == [0, 1, 2]
    missing = resolve_settings(str(robot_config(tmp_path, command_joints=["wrist_1_joint"] + JOINTS[1:],
                                                meaning="position", controller={"ramp_in_s": 0.5})), ckpt, {})
    with pytest.raises(UserError, match="need command.joints and a sensor_msgs/msg/JointState 'position'"):
        make_envelope(missing, -np.ones(3), np.ones(3))
    vel = resolve_settings(str(robot_config(tmp_path, controller={"max_position_error": [0.1]})), ckpt, {})
    with pytest.raises(UserError, match="max_position_error applies to position commands"):
        make_envelope(vel, -np.ones(3), np.ones(3))
