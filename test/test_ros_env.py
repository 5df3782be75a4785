"""RosRobotEnv over real DDS against sim_node running as a separate process.

The lockstep test replays the same actions on an in-process copy of the task (same seed, same
number of resets) and requires every observation that came over the topics to equal the
simulator's own, so the env neither skips nor repeats an observation.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, requires_ros
from smiling_ros.config import load_config
from smiling_ros.errors import UserError

pytestmark = requires_ros

HORIZON = 15  # episode length of the test config (ArmReach registers 100)


def write_config(d: Path, **over) -> Path:
    data = yaml.safe_load((REPO / "config" / "arm_reach.yaml").read_text())
    data["task"]["max_episode_steps"] = HORIZON
    for k, v in over.items():
        data[k] = v
    p = d / f"env_{len(list(d.glob('env_*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def start_sim(env: dict, log: Path, *params: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "smiling_ros.nodes.sim_node", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_lockstep_observations_match_the_simulator_and_episodes_end(tmp_path, ros_env):
    from smiling_ros.envs import make_env_from_config
    from smiling_ros.ros.env import RosRobotEnv

    cfg_path = write_config(tmp_path)
    sim = start_sim(ros_env, tmp_path / "sim.log", f"config:={cfg_path}", "mode:=lockstep")
    cfg = load_config(str(cfg_path))
    env = RosRobotEnv(cfg, reset_service="/sim_node/reset", timeout_s=20.0)
    try:
        assert env.observation_space.shape == (8,) and env.action_space.shape == (2,)
        obs, info = env.reset()
        assert obs.shape == (8,) and env.observation_space.contains(obs)
        ep = info["robot_episode"]
        assert isinstance(ep, int) and ep >= 0

        # The same task in-process, reset as often as sim_node was (make_env seeds it once).
        ref = make_env_from_config(cfg)
        for _ in range(ep + 1):
            ref_obs, _ = ref.reset()
        np.testing.assert_array_equal(obs, ref_obs)

        actions = [np.array([0.5, -0.25], np.float32), np.array([-1.0, 0.75], np.float32)]
        rets = []
        for t in range(HORIZON):
            a = actions[t % 2]
            obs, reward, terminated, truncated, info = env.step(a)
            ref_obs, ref_r, _, ref_trunc, _ = ref.step(a)
            rets.append(ref_r)
            np.testing.assert_array_equal(obs, ref_obs, err_msg=f"step {t + 1}")
            assert not terminated
            assert truncated == (t == HORIZON - 1) == ref_trunc
            if not truncated:
                assert reward == 0.0 and "is_success" not in info
        # The episode's last step carries the end marker: success, and the whole return.
        assert info["end_marker"]["steps"] == HORIZON and info["end_marker"]["episode"] == ep
        assert isinstance(info["is_success"], bool)
        assert reward == pytest.approx(sum(rets), abs=1e-5)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(actions[0])

        obs2, info2 = env.reset()  # a new episode: the robot's counter moves on
        assert info2["robot_episode"] == ep + 1
        np.testing.assert_array_equal(obs2, ref.reset()[0])
        with pytest.raises(UserError, match="NaN"):
            env.step(np.array([np.nan, 0.0]))
    finally:
        env.close()
        stop(sim)
    assert sim.returncode == 0, (tmp_path / "sim.log").read_text()[-2000:]
    env.close()  # idempotent


def test_robot_without_simulator_dims_from_first_observation_and_end_from_markers(tmp_path, ros_env):
    """No task in the config: spaces from the first observation and the limits; the episode
    end comes from sim_node's marker only (the env itself knows no horizon)."""
    from smiling_ros.ros.env import RosRobotEnv

    cfg_path = write_config(tmp_path, task={"env": "", "max_episode_steps": None},
                            limits={"action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]})
    # The robot: sim_node simulating ArmReach (registered horizon 100 steps).
    sim = start_sim(ros_env, tmp_path / "sim.log", f"config:={cfg_path}", "env:=smiling_ros/ArmReach-v0",
                    "mode:=lockstep")
    cfg = load_config(str(cfg_path))
    env = RosRobotEnv(cfg, timeout_s=20.0)
    try:
        assert env.max_episode_steps is None
        assert env.observation_space.shape == (8,)
        np.testing.assert_array_equal(env.action_space.low, [-1, -1])
        obs, _ = env.reset()
        steps, done = 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(np.zeros(2))
            steps += 1
            done = terminated or truncated
            assert steps <= 100
        assert steps == 100 and truncated and not terminated
        assert info["end_marker"]["reason"] == "done" and reward == info["end_marker"]["return"] < 0
    finally:
        env.close()
        stop(sim)


def test_realtime_robot_steps_once_per_control_period(tmp_path, ros_env):
    from smiling_ros.ros.env import RosRobotEnv

    cfg_path = write_config(tmp_path)
    sim = start_sim(ros_env, tmp_path / "sim.log", f"config:={cfg_path}", "mode:=realtime")
    cfg = load_config(str(cfg_path))
    env = RosRobotEnv(cfg, mode="realtime", timeout_s=20.0)
    try:
        obs0, _ = env.reset()
        t0 = time.monotonic()
        n = 8
        seen = [obs0]
        for _ in range(n):
            obs, *_ = env.step(np.array([1.0, 0.0]))
            seen.append(obs)
        dt = (time.monotonic() - t0) / n
        assert dt >= 0.9 / cfg.rate_hz  # never faster than the robot's control rate
        assert seen[-1][0] > obs0[0]  # shoulder joint moved with the positive velocity command
    finally:
        env.close()
        stop(sim)


def test_no_robot_is_a_one_line_error_naming_the_topic():
    from smiling_ros.ros.env import RosRobotEnv

    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        RosRobotEnv(load_config("arm_reach"), timeout_s=1.0)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "no observation on /observation within 1 s" in msg and "ROS_DOMAIN_ID" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="mode"):
        RosRobotEnv(load_config("arm_reach"), mode="fast")
