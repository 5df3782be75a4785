"""The own MuJoCo task (ArmReach), its scripted expert and heuristic, and Gymnasium ids via make_env."""
import gymnasium
import numpy as np
import pytest

from smiling_ros.config import load_config
from smiling_ros.envs import (
    ARM_REACH,
    OBS_LAYOUT,
    POST_XY,
    heuristic_controller,
    joint_state,
    make_env,
    make_env_from_config,
    passing_side,
    scripted_expert,
)
from smiling_ros.errors import UserError


def rollout(env, controller, seed):
    """One episode; returns (observation rows (T+1, D), success at the last step, return, infos)."""
    obs, info = env.reset(seed=seed)
    if controller is not None:
        controller.reset(obs)
    rows, ret, done, infos = [obs], 0.0, False, [info]
    while not done:
        a = controller.act(obs) if controller is not None else env.action_space.sample()
        obs, r, term, trunc, info = env.step(a)
        rows.append(obs)
        infos.append(info)
        ret += r
        done = term or trunc
    return np.array(rows), infos[-1]["is_success"], ret, infos


@pytest.fixture(scope="module")
def expert_runs():
    env = make_env(ARM_REACH, seed=0)
    expert = scripted_expert(env, seed=3)
    runs = []
    for ep in range(20):
        rows, ok, ret, infos = rollout(env, expert, seed=1000 + ep)
        runs.append((expert.mode, rows, ok, ret, infos))
    return runs


def test_registered_and_spaces():
    env = gymnasium.make(ARM_REACH)
    obs, info = env.reset(seed=1)
    assert env.spec.max_episode_steps == 100
    assert obs.shape == env.observation_space.shape == (8,)
    assert env.action_space.shape == (2,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert "is_success" in info and not info["is_success"]
    assert env.unwrapped.dt == pytest.approx(0.05)
    # Target and start vary with the seed, and repeat for the same seed.
    other, _ = env.reset(seed=2)
    again, _ = env.reset(seed=1)
    assert not np.allclose(obs, other) and np.allclose(obs, again)
    # The straight line from start to target crosses the post's x centre within the post's width.
    tip, target = obs[OBS_LAYOUT["tip"]], obs[OBS_LAYOUT["target"]]
    frac = (POST_XY[0] - tip[0]) / (target[0] - tip[0])
    assert abs(tip[1] + frac * (target[1] - tip[1]) - POST_XY[1]) < 0.09


def test_truncates_at_horizon_and_reports_success_every_step():
    env = make_env(ARM_REACH, seed=4)
    env.reset()
    steps = 0
    while True:
        _, r, term, trunc, info = env.step(np.zeros(2))
        steps += 1
        assert isinstance(info["is_success"], bool) and np.isfinite(r)
        if term or trunc:
            break
    assert steps == 100 and trunc and not term
    env = make_env(ARM_REACH, seed=4, max_episode_steps=7)
    env.reset()
    assert [env.step(np.zeros(2))[3] for _ in range(7)][-1]


def test_expert_succeeds(expert_runs):
    successes = [ok for _, _, ok, _, _ in expert_runs]
    assert np.mean(successes) >= 0.9


def test_expert_is_multimodal_and_passing_side_agrees(expert_runs):
    modes = [m for m, *_ in expert_runs]
    assert {"left", "right"} <= set(modes)
    for mode, rows, *_ in expert_runs:
        assert passing_side(rows) == mode
    # The two modes take genuinely different paths: fingertip y where it crosses the post differs in sign.
    mid = {m: [] for m in ("left", "right")}
    for mode, rows, *_ in expert_runs:
        i = np.argmin(np.abs(rows[:, 4] - POST_XY[0]))
        mid[mode].append(rows[i, 5])
    assert min(mid["left"]) > 0.1 and max(mid["right"]) < -0.1


def test_expert_never_touches_the_post(expert_runs):
    touching = sum(info["contact"] for *_, infos in expert_runs for info in infos)
    assert touching == 0


def test_heuristic_and_random_are_clearly_worse(expert_runs):
    env = make_env(ARM_REACH, seed=0)
    heuristic = heuristic_controller(env)
    expert_ret = np.mean([ret for *_, ret, _ in expert_runs])
    h = [rollout(env, heuristic, seed=1000 + ep) for ep in range(10)]
    r = [rollout(env, None, seed=1000 + ep) for ep in range(10)]
    assert np.mean([ok for _, ok, _, _ in h]) <= 0.3
    assert np.mean([ok for _, ok, _, _ in r]) <= 0.3
    assert np.mean([ret for *_, ret, _ in h]) < expert_ret - 10
    assert np.mean([ret for *_, ret, _ in r]) < expert_ret - 10
    # The heuristic is informative: it heads for the target and ends up caught on the post.
    assert all(passing_side(rows) is None for rows, *_ in h)
    assert any(info["contact"] for _, _, _, infos in h for info in infos)
    first = np.array([rows[0] for rows, *_ in h])
    last = np.array([rows[-1] for rows, *_ in h])
    d0 = np.linalg.norm(first[:, 4:6] - first[:, 6:8], axis=1)
    d1 = np.linalg.norm(last[:, 4:6] - last[:, 6:8], axis=1)
    assert np.all(d1 < d0)


def test_expert_runs_from_observation_only():
    env = make_env(ARM_REACH, seed=0)
    a, b = scripted_expert(env, seed=5), scripted_expert(env, seed=5)
    obs, _ = env.reset(seed=9)
    a.reset(obs)
    b.reset(obs.copy())
    assert a.mode == b.mode
    for _ in range(20):
        act = a.act(obs)
        assert act.shape == (2,) and np.all(np.abs(act) <= 1.0)
        assert np.array_equal(act, b.act(obs.copy()))
        obs, *_ = env.step(act)


def test_passing_side_edge_cases():
    rows = np.zeros((5, 8))
    rows[:, 4] = np.linspace(0.2, 0.45, 5)
    assert passing_side(rows) is None
    rows[:, 4] = np.linspace(0.2, 0.8, 5)
    rows[:, 5] = [0, 0.1, 0.2, 0.1, 0]
    assert passing_side(rows) == "left"
    rows[:, 5] *= -1
    assert passing_side(rows) == "right"
    with pytest.raises(ValueError):
        passing_side(np.zeros(8))


def test_gymnasium_mujoco_ids_and_joint_state():
    env = make_env("Hopper-v5", seed=0)
    assert env.spec.max_episode_steps == 1000
    names, pos, vel = joint_state(env)
    assert names == ["rootx", "rootz", "rooty", "thigh_joint", "leg_joint", "foot_joint"]
    assert pos.shape == vel.shape == (6,)
    assert np.allclose(pos, env.unwrapped.data.qpos)
    assert scripted_expert(env) is None and heuristic_controller(env) is None

    arm = make_env(ARM_REACH, seed=1)
    obs, _ = arm.reset(seed=1)
    obs, *_ = arm.step(np.array([0.5, -0.5]))
    names, pos, vel = joint_state(arm)
    assert names == ["shoulder", "elbow"]
    assert np.allclose(pos, obs[OBS_LAYOUT["qpos"]]) and np.allclose(vel, obs[OBS_LAYOUT["qvel"]])
    assert vel[0] > 0 and vel[1] < 0


def test_unknown_ids_and_bad_kwargs_are_user_errors():
    for bad in ("NoSuchTask-v0", "smiling_ros/NoSuch-v0", ""):
        with pytest.raises(UserError) as err:
            make_env(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="env_kwargs"):
        make_env(ARM_REACH, no_such_option=1)


def test_make_env_from_config(tmp_path):
    cfg = load_config("arm_reach")
    env = make_env_from_config(cfg)
    assert env.spec.id == ARM_REACH and env.spec.max_episode_steps == cfg.task.max_episode_steps
    cfg.task.env = ""
    with pytest.raises(UserError, match="task.env"):
        make_env_from_config(cfg)
