"""SMILING: score players, DS cost, the SAC loop on the own arm task, resume, DAC/BC, bad input.

Tiny configs (small nets, a few thousand env steps) that still show learning; real MuJoCo,
real stable-baselines3 SAC, real safetensors checkpoints."""
from __future__ import annotations

import copy
import json
import math

import gymnasium
import numpy as np
import pytest
import torch

from smiling_ros.learn.checkpoint import load_checkpoint
from smiling_ros.config import load_config
from smiling_ros.data.dataset import Dataset
from smiling_ros.errors import UserError

ARM = "smiling_ros/ArmReach-v0"


def tiny_cfg(**smiling):
    """config/arm_reach.yaml with CPU-test-sized SMILING options."""
    cfg = load_config("config/arm_reach.yaml")
    cfg.smiling = {
        "total_steps": 2500, "expert_steps": 300, "score_hidden": 128, "score_batch": 256,
        "learner_every": 250, "learner_states": 2048, "learner_fifo": 5000, "eval_every": 2500,
        "eval_episodes": 5, "checkpoint_every": 10**6, "log_every": 500,
        "sac": {"hidden": [64, 64], "batch_size": 128, "learning_starts": 300, "gamma": 0.97, "lr": 1e-3},
        "dac": {"hidden": 64, "update_every": 250, "updates": 20},
        "bc": {"hidden": [64, 64], "steps": 400, "eval_every": 400},
        **smiling,
    }
    cfg.expert = {"checkpoint": "scripted", "reference_episodes": 5}
    return cfg


@pytest.fixture(scope="module")
def arm_demos(tmp_path_factory):
    """10 scripted-expert episodes on the arm task, saved and reloaded like a user's dataset."""
    from smiling_ros.envs import make_env
    from smiling_ros.data.evaluation import resolve_policy, run_episodes

    env = make_env(ARM)
    eps = run_episodes(resolve_policy("scripted", env, seed=7), env, 10, seed=100, record=True)
    env.close()
    ds = Dataset.from_episodes([(e["obs"], e["act"]) for e in eps],
                               {"task": ARM, "expert_return": float(np.mean([e["return"] for e in eps]))})
    path = tmp_path_factory.mktemp("demos") / "arm"
    ds.save(path)
    return Dataset.load(path)


def random_states(n: int, seed: int = 0) -> np.ndarray:
    """States visited by a uniform-random policy on the arm task."""
    from smiling_ros.envs import make_env
    from smiling_ros.data.evaluation import RandomPolicy, run_episodes

    env = make_env(ARM)
    eps = run_episodes(RandomPolicy(env.action_space, seed), env, max(1, n // 100), seed=seed, record=True)
    env.close()
    return np.concatenate([e["obs"] for e in eps])[:n]


# ----------------------------------------------------------------------------------- the cost
def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) over all pairs."""
    return float((pos[:, None] > neg[None, :]).mean())


def test_expert_net_and_ds_cost_rank_expert_states_above_random(arm_demos):
    from smiling_ros.learn.diffusion import per_sample_denoising_error
    from smiling_ros.methods.smiling.config import SmilingSection
    from smiling_ros.methods.smiling.score import DSCost, ScorePlayer, batch_iterator, draw_timesteps, pretrain_expert

    torch.manual_seed(0)
    opts = SmilingSection(expert_steps=600, score_hidden=128, score_batch=256)
    train, held_out = arm_demos.obs[:800], arm_demos.obs[800:]
    expert, norm, losses = pretrain_expert(train, opts, torch.device("cpu"))
    assert np.mean(losses[-50:]) < 0.6 * np.mean(losses[:50])  # the expert net learned something
    rnd = random_states(400, seed=3)

    # Expert net alone: held-out expert states are denoised better than random-policy states.
    def err(x):
        xn = torch.as_tensor(norm.normalize(x)).clamp(-10, 10).repeat_interleave(64, 0)
        t = draw_timesteps(len(x), 64, expert.t_max).reshape(-1)
        e = per_sample_denoising_error(expert.net, expert.schedule, xn, t, torch.randn_like(xn))
        return e.view(len(x), 64).mean(1).detach().numpy()

    assert _auc(err(rnd), err(held_out)) > 0.9

    # DS cost after one learner round on random-policy states: expert states earn more reward.
    learner = ScorePlayer(train.shape[1], expert.schedule, expert.t_max, 128, 1, 5e-3)
    learner.load_from(expert)
    x_rnd = torch.as_tensor(norm.normalize(random_states(1000, seed=11))).clamp(-10, 10)
    learner.fit(batch_iterator(x_rnd, 256), 200)
    cost = DSCost(expert.net, learner.net, expert.schedule, norm, K=8, t_max=expert.t_max)
    r_exp = cost.raw(torch.as_tensor(held_out)).numpy()
    r_rnd = cost.raw(torch.as_tensor(rnd)).numpy()
    assert r_exp.mean() > r_rnd.mean()
    assert _auc(r_exp, r_rnd) > 0.9
    # normalised per batch: zero mean, std 0.1
    r = cost(torch.as_tensor(np.concatenate([held_out, rnd])))
    assert abs(float(r.mean())) < 1e-5 and abs(float(r.std()) - 0.1) < 1e-4


def test_timesteps_are_stratified_and_paired_with_their_state():
    from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, per_sample_denoising_error
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.methods.smiling.score import DSCost, draw_timesteps

    t = draw_timesteps(500, 4, 700)
    lo = torch.arange(4) * 175
    assert ((t >= lo) & (t < lo + 175)).all()  # one draw per stratum ...
    assert len({tuple(r) for r in t.tolist()}) > 450  # ... drawn per state, not shared
    assert (draw_timesteps(3, 5, 5000, "grid") == torch.arange(0, 5000, 1000)).all()

    torch.manual_seed(1)
    sched = NoiseSchedule(1000)
    e, l = ScoreNet(3, hidden=16), ScoreNet(3, hidden=16)
    cost = DSCost(e, l, sched, Normalizer.identity(3), K=3, t_max=600)
    x = torch.randn(5, 3)
    torch.manual_seed(2)
    r = cost.raw(x, normalized=True)
    torch.manual_seed(2)  # the same draws, paired by hand: state b with t[b, k] and its own eps
    t = draw_timesteps(5, 3, 600)
    eps = torch.randn(15, 3)
    with torch.no_grad():
        ref = [np.mean([float(per_sample_denoising_error(l, sched, x[b:b + 1], t[b, k:k + 1], eps[3 * b + k:3 * b + k + 1])
                             - per_sample_denoising_error(e, sched, x[b:b + 1], t[b, k:k + 1], eps[3 * b + k:3 * b + k + 1]))
                       for k in range(3)]) for b in range(5)]
    assert np.allclose(r.numpy(), ref, atol=1e-5)


def test_timestep_range_informative_and_noise_floor():
    from smiling_ros.learn.diffusion import NoiseSchedule
    from smiling_ros.methods.smiling.score import draw_timesteps, t_max_of, timestep_range

    official = NoiseSchedule(5000, "linear", 1e-4, 0.02)
    n = t_max_of(official, 1e-3)
    assert 1700 < n < 2000  # ~63% of the official T=5000 grid is pure noise
    assert t_max_of(official, 0) == 5000
    sched = NoiseSchedule(1000)
    t_min, t_max = timestep_range(sched, 1e-3, 0.5)
    sigma = (1 - sched.abar).sqrt()
    assert sigma[t_min] >= 0.5 > sigma[t_min - 1] and sched.abar[t_max - 1] > 1e-3 >= sched.abar[t_max]
    t = draw_timesteps(1000, 4, t_max, t_min=t_min)
    assert int(t.min()) >= t_min and int(t.max()) < t_max
    with pytest.raises(UserError, match="min_sigma"):
        timestep_range(sched, 0.9, 0.9)


def test_batch_normalisation_is_robust_to_outliers():
    from smiling_ros.methods.smiling.score import normalize_batch

    torch.manual_seed(0)
    r = torch.cat([torch.randn(250) * 0.3, torch.full((3,), -40.0)])  # a few (1.2%) far-off states
    plain, robust = normalize_batch(r, 0.1), normalize_batch(r, 0.1, clip=0.02)
    for out in (plain, robust):
        assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 0.1) < 1e-4
    spread = lambda x: float(x[:250].std())  # noqa: E731 - spread among the ordinary states
    assert spread(robust) > 3 * spread(plain)


def test_learner_loss_falls_over_rounds(arm_demos):
    """Follow-the-Leader rounds on a fixed learner distribution: the learner net's loss falls."""
    from stable_baselines3.common.buffers import ReplayBuffer  # noqa: F401 - the real SB3 buffer underneath

    from smiling_ros.envs import make_env
    from smiling_ros.methods.smiling.buffer import RelabelingReplayBuffer
    from smiling_ros.methods.smiling.config import SmilingSection
    from smiling_ros.methods.smiling.score import SmilingReward

    torch.manual_seed(0)
    env = make_env(ARM)
    buf = RelabelingReplayBuffer(5000, env.observation_space, env.action_space, device="cpu")
    rnd = random_states(2100, seed=5)
    for i in range(2000):
        buf.add(rnd[i], rnd[i + 1], np.zeros(2, np.float32), np.zeros(1), np.zeros(1), [{}])
    opts = SmilingSection(expert_steps=300, score_hidden=128, score_batch=256, learner_every=100, learner_states=2560)
    game = SmilingReward(arm_demos.obs, opts, torch.device("cpu"))
    game.setup()
    losses = []
    for step in (100, 200, 300, 400):
        m = game.update(step, buf)
        losses.append((m["learner_loss_first"], m["learner_loss"], m["learner_loss_last"]))
    assert game.rounds == 4
    assert losses[0][0] > 1.3 * losses[-1][2]  # warm start (expert net) fits learner states poorly at first
    assert losses[-1][1] < losses[0][1]
    assert game.update(450, buf) is None  # not due


# ----------------------------------------------------------------------------------- the loop
@pytest.mark.slow
def test_smiling_on_arm_beats_random_and_exports_policy(arm_demos, tmp_path):
    from smiling_ros.learn.policy import MlpPolicy, load_policy
    from smiling_ros.methods.smiling.trainer import train

    events = []
    out = tmp_path / "run"
    path = train(tiny_cfg(), arm_demos, out, total_steps=2500, progress=False, callback=events.append)
    assert path == out / "policy.safetensors"
    pol = load_policy(path)
    assert isinstance(pol, MlpPolicy) and pol.meta["method"] == "smiling" and pol.meta["task"] == ARM
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final_eval"]
    refs = summary["references"]
    assert summary["absorbing"] is False  # smiling.absorbing: off unless set
    assert refs["expert"] > refs["random"] + 20
    # clearly better than a uniform-random policy after 2500 env steps
    assert float(final["normalized_return"]) > 0.12
    assert float(final["mean_return"]) > refs["random"] + 5
    for f in ("train.csv", "eval.csv", "learning_curve.png", "state.safetensors", "state.json", "references.json"):
        assert (out / f).exists(), f
    assert any("checkpoint" in e for e in events) and any("metrics" in e for e in events)
    assert summary["wall_clock"]["reward_s"] > 0 and summary["reward_metrics"]["learner_rounds"] >= 9
    # the cost used K=4 rows per sampled state (batch 128), not the official 500
    assert summary["score_rows_per_update"] == pytest.approx(4 * 128)


def crash_after(step: int):
    """A trainer callback that raises at the first metrics event at or after ``step`` (a crash mid-run)."""

    def crash(ev):
        if ev.get("step", 0) >= step and "metrics" in ev:
            raise RuntimeError("simulated crash")

    return crash


@pytest.mark.slow
def test_resume_after_crash_reaches_same_step_count(arm_demos, tmp_path):
    from smiling_ros.methods.smiling.trainer import train

    cfg = tiny_cfg(total_steps=900, checkpoint_every=300, eval_every=450, eval_episodes=2, log_every=150,
                   expert_steps=100)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, arm_demos, out, progress=False, callback=crash_after(750))
    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["step"] == 600 and st.meta["buffer"]["used"] == 600
    learner_before = st.tensors["score.learner.mlp.0.weight"].clone()
    with pytest.raises(UserError, match="--resume"):  # never silently overwrites a run
        train(cfg, arm_demos, out, progress=False)

    train(cfg, arm_demos, out, resume=True, progress=False)
    st2 = load_checkpoint(out / "state.safetensors")
    assert st2.meta["step"] == 900 and st2.meta["sac"]["num_timesteps"] == 900
    assert st2.meta["buffer"]["used"] == 900
    assert st2.meta["reward"]["rounds"] > st.meta["reward"]["rounds"]
    assert not torch.equal(st2.tensors["score.learner.mlp.0.weight"], learner_before)
    # the expert net is restored, not retrained
    assert torch.equal(st2.tensors["score.expert.mlp.0.weight"], st.tensors["score.expert.mlp.0.weight"])
    steps = [int(r.split(",")[0]) for r in (out / "train.csv").read_text().splitlines()[1:]]
    assert steps == [150, 300, 450, 600, 750, 900]  # rows after the checkpoint were dropped, no duplicates
    ev_steps = [int(r.split(",")[0]) for r in (out / "eval.csv").read_text().splitlines()[1:]]
    assert ev_steps == [450, 900]


def test_callback_false_stops_cleanly_with_checkpoint(arm_demos, tmp_path):
    from smiling_ros.methods.smiling.trainer import train

    cfg = tiny_cfg(total_steps=2000, eval_episodes=0, log_every=100, expert_steps=50, variant="state_action")
    out = tmp_path / "run"
    seen = []

    def stop(ev):
        seen.append(ev)
        return not (ev.get("step", 0) >= 400 and "metrics" in ev)

    train(cfg, arm_demos, out, progress=False, callback=stop)
    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["step"] == 400 and st.meta["variant"] == "state_action"
    assert st.tensors["score.expert.mlp.0.weight"].shape[1] == 8 + 2 + 16  # [s, a] + time embedding
    assert seen[-1] == {"step": 400, "checkpoint": str(out / "policy.safetensors")}


@pytest.mark.slow
def test_dac_runs_and_discriminator_separates(arm_demos, tmp_path):
    from smiling_ros.envs import make_env
    from smiling_ros.learn.policy import load_policy
    from smiling_ros.methods.smiling.buffer import RelabelingReplayBuffer
    from smiling_ros.methods.smiling.config import DacSection, SmilingSection
    from smiling_ros.methods.smiling.dac import DacReward, train_dac

    out = tmp_path / "dac"
    path = train_dac(tiny_cfg(eval_episodes=2), arm_demos, out, total_steps=800, progress=False)
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "dac" and s["steps"] == 800 and s["reward_metrics"]["disc_rounds"] >= 3
    assert s["reward_metrics"]["reward_raw_mean"] > 0  # -log(1 - sigmoid(D)) > 0
    assert load_policy(path).meta["method"] == "dac"
    assert load_checkpoint(out / "state.safetensors").kind == "dac_run"

    # The discriminator (paper size: 256 hidden, gradient penalty 10) separates expert from random states.
    torch.manual_seed(0)
    env = make_env(ARM)
    buf = RelabelingReplayBuffer(2000, env.observation_space, env.action_space, device="cpu")
    rnd = random_states(1100, seed=5)
    for i in range(1000):
        buf.add(rnd[i], rnd[i + 1], np.zeros(2, np.float32), np.zeros(1), np.zeros(1), [{}])
    dac = DacReward(arm_demos.obs, SmilingSection(dac=DacSection(update_every=100, updates=100)), torch.device("cpu"))
    for k in (1, 2, 3):
        m = dac.update(100 * k, buf)
    assert m["disc_acc"] > 0.8
    r_exp = dac.reward(torch.as_tensor(arm_demos.obs[::5]))
    r_rnd = dac.reward(torch.as_tensor(random_states(200, seed=9)))
    assert float(r_exp.mean()) > float(r_rnd.mean())


@pytest.mark.slow
def test_bc_learns_the_demo_actions(arm_demos, tmp_path):
    from smiling_ros.learn.policy import load_policy
    from smiling_ros.methods.bc import train_bc

    out = tmp_path / "bc"
    path = train_bc(tiny_cfg(eval_episodes=3), arm_demos, out, progress=False)
    pol = load_policy(path)
    s = json.loads((out / "summary.json").read_text())
    first = float((out / "train.csv").read_text().splitlines()[1].split(",")[1])
    assert s["final_loss"] < 0.5 * first
    assert float(s["final_eval"]["normalized_return"]) > 0.5  # BC does well on this smooth task
    a = pol.act(arm_demos.obs[:50])
    assert np.abs(a - arm_demos.act[:50]).mean() < np.abs(arm_demos.act[:50]).mean()


# ----------------------------------------------------------------------------------- bad input
def test_bad_demos_are_one_line_errors(arm_demos, tmp_path):
    from smiling_ros.methods.smiling.trainer import train

    cfg = tiny_cfg()
    wrong = Dataset(np.zeros((300, 5), np.float32), None, np.array([300]), {"path": "wrong_dim"})
    with pytest.raises(UserError, match=r"wrong_dim: demonstrations have 5-dim observations but .* has 8"):
        train(cfg, wrong, tmp_path / "a", progress=False)
    few = Dataset(arm_demos.obs[:10], None, np.array([10]), {"path": "few"})
    with pytest.raises(UserError, match="only 10 demonstration states"):
        train(cfg, few, tmp_path / "b", progress=False)
    state_only = Dataset(arm_demos.obs, None, arm_demos.episode_ends, {"path": "so"})
    with pytest.raises(UserError, match="state-only"):
        train(cfg, state_only, tmp_path / "c", progress=False, variant="state_action")
    other_task = Dataset(arm_demos.obs, None, arm_demos.episode_ends, {"path": "hop", "task": "Hopper-v5"})
    with pytest.raises(UserError, match="recorded for task 'Hopper-v5'"):
        train(cfg, other_task, tmp_path / "d", progress=False)
    assert not (tmp_path / "a" / "state.safetensors").exists()


class NanRewardAfter(gymnasium.Wrapper):
    """Pendulum whose reward turns NaN after ``n`` steps (a diverging reward signal)."""

    def __init__(self, env, n):
        super().__init__(env)
        self.n, self.k = n, 0

    def step(self, a):
        obs, r, term, trunc, info = self.env.step(a)
        self.k += 1
        return obs, (math.nan if self.k > self.n else r), term, trunc, info


def test_non_finite_loss_is_a_user_error_and_keeps_last_checkpoint(tmp_path):
    from smiling_ros.learn.policy import load_policy
    from smiling_ros.methods.smiling.trainer import run

    cfg = tiny_cfg(checkpoint_every=200, eval_episodes=0, log_every=100)
    cfg.task.env, cfg.task.max_episode_steps = "Pendulum-v1", 200
    out = tmp_path / "sac"
    env_fn = lambda: NanRewardAfter(gymnasium.make("Pendulum-v1", max_episode_steps=200), 500)  # noqa: E731
    with pytest.raises(UserError, match="non-finite critic loss at env step") as exc:
        run("sac", cfg, None, out, env_fn=env_fn, total_steps=1000, progress=False)
    assert "\n" not in str(exc.value)
    assert load_checkpoint(out / "state.safetensors").meta["step"] in (400, 600)
    assert load_policy(out / "policy.safetensors").obs_dim == 3  # the last good policy is intact
