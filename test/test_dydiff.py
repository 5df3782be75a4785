"""DyDiff: window diffusion + ensemble world model, its rollouts against real MuJoCo, the
world-model Gymnasium env (checked, and SMILING runs in it), the offline learner, and bad input."""
from __future__ import annotations

import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

from smiling_ros.cli import main
from smiling_ros.data.dataset import Dataset
from smiling_ros.errors import UserError
from smiling_ros.learn.common import collect_dataset
from smiling_ros.methods.dydiff.train import DyDiffConfig, TD3BCConfig, train_offline, train_world_model, windows

ENV = "InvertedPendulum-v5"
H = 32


def _noisy_balancer(seed: int):
    """A weak balancing controller with correlated noise: the pole wobbles, episodes end when it falls."""
    rng = np.random.default_rng(seed)
    state = {"x": 0.0}

    def act(o):
        state["x"] = 0.9 * state["x"] + 0.5 * rng.normal()
        return np.clip([1.0 * o[0] + 8.0 * o[1] + 0.5 * o[2] + 1.0 * o[3] + state["x"]], -3, 3)

    return act


@pytest.fixture(scope="module")
def data():
    env = gym.make(ENV, max_episode_steps=200)
    train = collect_dataset(env, _noisy_balancer(0), 30, seed=0, task=ENV)
    held_out = collect_dataset(env, _noisy_balancer(1), 20, seed=500, task=ENV)
    return train, held_out


@pytest.fixture(scope="module")
def world_model(data):
    cfg = DyDiffConfig(horizon=H, T=50, hidden=192, layers=3, steps=1200, ensemble_size=3, ensemble_hidden=64,
                       ensemble_steps=1200, reward_steps=300, rollouts_per_round=32, rollout_every=100,
                       env_horizon=60, td3bc=TD3BCConfig(steps=200, batch_size=64, hidden=[64, 64]))
    space = gym.make(ENV).action_space
    return train_world_model(data[0], cfg, space.low, space.high, seed=0, progress=False, max_episode_steps=200)


@pytest.mark.slow
def test_dydiff_rollouts_stay_closer_to_mujoco_than_single_step_ensemble(data, world_model):
    """Open loop over H steps from held-out MuJoCo windows (same s0, same actions): the refined DyDiff
    rollout drifts less from the true states than the ensemble rolled out step by step."""
    S, A = windows(data[1], H)
    S, A = torch.as_tensor(S), torch.as_tensor(A)
    g = torch.Generator().manual_seed(0)
    ens, _ = world_model.ensemble_rollout(S[:, 0], actions=A, gen=g, member="random")
    dyd = world_model.rollout(S[:, 0], actions=A, gen=g)["states"]
    std = torch.as_tensor(world_model.obs_norm.std)

    def err(X):  # RMS error in data-std units at each step of the window: (H,)
        return (((X - S) / std) ** 2).mean(-1).sqrt().mean(0)

    e_ens, e_dyd = err(ens), err(dyd)
    assert e_ens[0] == 0 and e_dyd[0] == 0  # s0 is given
    # (measured on three data seeds: DyDiff/ensemble mean-error ratio 0.3 .. 0.91)
    assert e_dyd.mean() < 0.95 * e_ens.mean(), (e_dyd, e_ens)
    assert e_dyd[-1] < e_ens[-1]


@pytest.mark.slow
def test_policy_injected_rollouts_filter_and_relabel(data, world_model):
    s0 = torch.as_tensor(data[0].obs[:40])
    policy = lambda s: torch.clamp(8.0 * s[:, 1:2] + 1.0 * s[:, 3:4], -3, 3)  # noqa: E731
    out = world_model.rollout(s0, policy, gen=torch.Generator().manual_seed(1))
    assert out["states"].shape == (40, H, 4) and out["actions"].shape == (40, H, 1)
    # after the last refinement the actions are pi(s) of the final states (relabelled)
    torch.testing.assert_close(out["actions"], policy(out["states"].flatten(0, 1)).view(40, H, 1))
    tr = world_model.filtered_transitions(s0, policy, torch.Generator().manual_seed(1))
    kept = int(tr["kept"])
    assert 1 <= kept <= round(0.6 * 40) and 0 < tr["obs"].shape[0] <= kept * (H - 1)
    assert torch.isfinite(tr["reward"]).all() and set(tr["done"].unique().tolist()) <= {0.0, 1.0}
    # the pole falls in the recorded episodes: the termination model learned where episodes end
    ds = data[0]
    last = ds.episode_ends - 1
    others = np.setdiff1d(np.arange(len(ds.obs)), last)
    term = world_model.is_terminal
    assert term(torch.as_tensor(ds.obs[last])).float().mean() > 0.5
    assert term(torch.as_tensor(ds.obs[others])).float().mean() < 0.2


def test_offline_learner_mixes_synthetic_batches(data, world_model, tmp_path):
    space = gym.make(ENV).action_space
    agent = train_offline(data[0], world_model.cfg, space.low, space.high, world_model=world_model, seed=0,
                          steps=120, log_path=tmp_path / "td3.csv", progress=False)
    rows = (tmp_path / "td3.csv").read_text().splitlines()
    assert int(float(rows[-1].split(",")[rows[0].split(",").index("synthetic")])) > 0
    a = agent.policy().act(data[0].obs[:3])
    assert a.shape == (3, 1) and np.all(np.abs(a) <= 3)


def test_world_model_env_is_valid_gymnasium_env(world_model, tmp_path):
    from gymnasium.utils.env_checker import check_env

    from smiling_ros.config import config_from_dict
    from smiling_ros.methods.dydiff.world_model_env import make_world_model_env

    path = world_model.save(tmp_path / "wm.safetensors")
    cfg = config_from_dict({"task": {"env": ENV}, "observation": [{"topic": "/observation"}]}, "test.yaml")
    env = make_world_model_env(path, cfg)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (4,) and env.action_space.shape == (1,)
    n, done = 0, False
    while not done:
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
        assert np.isfinite(obs).all() and np.isfinite(r)
        n += 1
        done = term or trunc
    assert n <= 60
    # another task, other dims, another kind: one-line errors naming the file
    other = config_from_dict({"task": {"env": "Hopper-v5"}, "observation": [{"topic": "/observation"}]}, "o.yaml")
    with pytest.raises(UserError, match="trained for task 'InvertedPendulum-v5'"):
        make_world_model_env(path, other)
    dims = config_from_dict({"task": {"env": ENV}, "observation": [{"topic": "/observation", "size": 11}]}, "d.yaml")
    with pytest.raises(UserError, match="obs_dim is 4 but"):
        make_world_model_env(path, dims)
    from smiling_ros.learn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "pol.safetensors", {"x": torch.zeros(1)}, {"kind": "mlp_policy"})
    with pytest.raises(UserError, match="expected dydiff"):
        make_world_model_env(tmp_path / "pol.safetensors", cfg)


def _config(tmp_path) -> str:
    p = tmp_path / "ip.yaml"
    p.write_text(textwrap.dedent(f"""
        task: {{env: {ENV}, max_episode_steps: 200}}
        observation:
          - {{topic: /observation, field: data}}
        action:
          - {{topic: /forward_command_controller/commands, field: data}}
        dydiff: {{horizon: {H}, T: 20, hidden: 64, layers: 2, steps: 60, ensemble_size: 2, ensemble_hidden: 32,
                  ensemble_steps: 60, reward_steps: 30, rollouts_per_round: 16, rollout_every: 20, env_horizon: 40,
                  td3bc: {{steps: 40, batch_size: 32, hidden: [32, 32]}}}}
        smiling: {{total_steps: 200, expert_steps: 50, learner_every: 100, learner_states: 256, score_batch: 128,
                   eval_episodes: 0, checkpoint_every: 200, log_every: 100, min_demo_states: 20,
                   sac: {{learning_starts: 100, batch_size: 32}}}}
        """))
    return str(p)


@pytest.mark.slow
def test_cli_train_dydiff_then_smiling_in_the_world_model(data, tmp_path, capsys):
    data[0].save(tmp_path / "demos")
    cfg = _config(tmp_path)
    wm = tmp_path / "wm.safetensors"
    assert main(["train-dydiff", "--config", cfg, "--dataset", str(tmp_path / "demos"), "--out", str(wm),
                 "--policy-out", str(tmp_path / "td3bc"), "--quiet"]) == 0
    for name in ("wm.safetensors", "wm.json", "wm.train.csv", "wm.train.png", "td3bc.safetensors", "td3bc.train.csv"):
        assert (tmp_path / name).exists(), name
    from smiling_ros.learn.policy import load_policy

    assert load_policy(tmp_path / "td3bc.safetensors", device="cpu").meta["method"] == "td3bc+dydiff"
    rc = main(["train-smiling", "--config", cfg, "--dataset", str(tmp_path / "demos"), "--out", str(tmp_path / "run"),
               "--world-model", str(wm), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    pol = load_policy(tmp_path / "run" / "policy.safetensors", device="cpu")
    assert pol.act(data[0].obs[0]).shape == (1,)
    # the world model's terminations (learned falls, halts) can be valued as absorbing states
    import json

    assert json.loads((tmp_path / "run" / "summary.json").read_text())["absorbing"] is False
    on = tmp_path / "ip_absorbing.yaml"
    on.write_text(open(cfg).read().replace("smiling: {", "smiling: {absorbing: true, "))
    assert main(["train-smiling", "--config", str(on), "--dataset", str(tmp_path / "demos"), "--out",
                 str(tmp_path / "run_on"), "--world-model", str(wm), "--no-progress", "--steps", "120"]) == 0
    assert json.loads((tmp_path / "run_on" / "summary.json").read_text())["absorbing"] is True


def test_the_model_halts_where_its_ensemble_disagrees_more_than_on_any_recorded_transition(data, world_model,
                                                                                            tmp_path):
    import copy

    from smiling_ros.methods.dydiff.train import WorldModel
    from smiling_ros.methods.dydiff.world_model_env import WorldModelEnv

    thr = world_model.halt_threshold
    assert thr is not None and thr > 0
    train, held = data[0].transitions(), data[1].transitions()
    unknown = lambda tr: world_model.unknown(torch.as_tensor(tr["obs"]), torch.as_tensor(tr["act"]))  # noqa: E731
    assert not unknown(train).any()  # the threshold is the largest disagreement on the recorded transitions
    # states the pendulum data never visits (cart far off, pole tilted, fast) with full-scale actions
    rng = np.random.default_rng(0)
    far = torch.as_tensor(rng.uniform(-1, 1, (500, 4)).astype(np.float32) * np.array([1, 0.2, 3, 3], np.float32)
                          + data[0].obs.mean(0))
    push = torch.as_tensor(rng.choice([-3.0, 3.0], (500, 1)).astype(np.float32))
    assert world_model.unknown(far, push).float().mean() > 3 * unknown(held).float().mean() + 0.05
    # the threshold survives save/load
    path = world_model.save(tmp_path / "wm.safetensors")
    assert WorldModel.load(path).halt_threshold == pytest.approx(thr)
    # in the env: (s, a) beyond the threshold ends the episode with info['halt']; no threshold, no halt
    strict = copy.copy(world_model)
    strict.halt_threshold = 0.0
    env = WorldModelEnv(strict, horizon=20)
    env.reset(seed=0)
    _, _, term, trunc, info = env.step(env.action_space.sample())
    assert term and info["halt"] and not trunc
    # rollouts are cut there: nothing from them reaches the offline learner
    s0 = torch.as_tensor(data[0].obs[:8])
    policy = lambda s: torch.zeros(s.shape[0], 1)  # noqa: E731
    assert not strict.rollout(s0, policy, gen=torch.Generator().manual_seed(0))["valid"].any()
    assert world_model.rollout(s0, policy, gen=torch.Generator().manual_seed(0))["valid"].all()
    strict.halt_threshold = None
    env = WorldModelEnv(strict, horizon=20)
    env.reset(seed=0)
    assert not any(env.step(np.zeros(1, np.float32))[4]["halt"] for _ in range(5))


def test_bad_input(data, tmp_path, capsys):
    cfg = _config(tmp_path)
    short = Dataset.from_episodes([(data[0].obs[:10], data[0].act[:10])] * 3, {"task": ENV})
    with pytest.raises(UserError, match="too few transitions for the window length"):
        windows(short, H)
    short.save(tmp_path / "short")
    assert main(["train-dydiff", "--config", cfg, "--dataset", str(tmp_path / "short"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "horizon is 32" in err and "short" in err and len(err.splitlines()) == 1
    Dataset(data[0].obs, None, data[0].episode_ends, {"task": ENV}).save(tmp_path / "states")
    assert main(["train-dydiff", "--config", cfg, "--dataset", str(tmp_path / "states"), "--out", str(tmp_path / "w")]) == 2
    assert "needs actions" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.slow
def test_smiling_in_the_world_model_is_evaluated_in_mujoco(data, world_model, tmp_path):
    """`train-smiling --world-model` trains in the world model, but the evaluation it reports (eval.csv,
    references) is the learned policy's return in MuJoCo, the task's simulator."""
    import csv

    from smiling_ros.config import load_config
    from smiling_ros.data.evaluation import RandomPolicy, evaluate, run_episodes
    from smiling_ros.methods.dydiff.world_model_env import make_world_model_env

    data[0].save(tmp_path / "demos")
    wm = world_model.save(tmp_path / "wm.safetensors")
    cfg = tmp_path / "ip_eval.yaml"
    cfg.write_text(open(_config(tmp_path)).read().replace("eval_episodes: 0", "eval_episodes: 3"))
    run = tmp_path / "run"
    assert main(["train-smiling", "--config", str(cfg), "--dataset", str(tmp_path / "demos"), "--out", str(run),
                 "--world-model", str(wm), "--seed", "3", "--no-progress"]) == 0
    last = list(csv.DictReader(open(run / "eval.csv")))[-1]
    sim = lambda: gym.make(ENV, max_episode_steps=200)  # noqa: E731
    real = evaluate(str(run / "policy.safetensors"), sim, 3, seed=1_000_003)  # the trainer's eval seeds
    assert float(last["mean_return"]) == pytest.approx(real["mean_return"], rel=1e-6)
    in_wm = evaluate(str(run / "policy.safetensors"), None, 3, seed=1_000_003,
                     env=make_world_model_env(wm, load_config(str(cfg))))
    assert in_wm["mean_return"] != pytest.approx(real["mean_return"], rel=1e-3)  # the check can tell them apart
    # the random reference (normalisation) comes from MuJoCo too
    import json

    refs = json.loads((run / "references.json").read_text())
    env = sim()
    rnd = run_episodes(RandomPolicy(env.action_space, 2_000_003), env, refs["episodes"], 2_000_003)
    assert refs["random"] == pytest.approx(np.mean([e["return"] for e in rnd]), rel=1e-6)
