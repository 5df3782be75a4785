"""SMILING/DAC with several in-process env copies (``smiling.n_envs``): exact env-step counts,
one gradient step per env step, the relabelling replay buffer and the learner FIFO over all
copies, resume, and the option's validation. Real MuJoCo (ArmReach, 100-step episodes), real
stable-baselines3 SAC and DummyVecEnv, tiny budgets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smiling_ros.learn.checkpoint import load_checkpoint
from smiling_ros.errors import UserError
from test_smiling import ARM, arm_demos, crash_after, tiny_cfg  # noqa: F401 - arm_demos is a fixture

EP_LEN = 100  # ArmReach episodes end by time limit only


def test_n_envs_option_is_validated(arm_demos, tmp_path):
    from smiling_ros.methods.smiling.config import smiling_section
    from smiling_ros.methods.smiling.trainer import train

    assert smiling_section(tiny_cfg()).n_envs == 1  # default
    assert smiling_section(tiny_cfg(n_envs=3)).n_envs == 3
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(UserError, match=r"smiling\.n_envs") as exc:
            smiling_section(tiny_cfg(n_envs=bad))
        assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="n_envs: .* >= 1, got 0"):
        train(tiny_cfg(), arm_demos, tmp_path / "run", n_envs=0, progress=False)
    assert not (tmp_path / "run").exists()


def test_fifo_and_relabelled_batches_cover_every_env_copy(arm_demos):
    """Buffer level: the learner FIFO holds the latest n transitions of all copies in time order,
    and a sampled batch's relabelled rewards are (B, 1) and finite."""
    from smiling_ros.envs import make_env
    from smiling_ros.methods.smiling.buffer import RelabelingReplayBuffer, recent_rows, sample_inputs
    from smiling_ros.methods.smiling.config import SmilingSection
    from smiling_ros.methods.smiling.score import SmilingReward

    env = make_env(ARM)
    n_envs, positions = 3, 50
    buf = RelabelingReplayBuffer(3000, env.observation_space, env.action_space, device="cpu", n_envs=n_envs)
    assert buf.buffer_size == 1000  # SB3 counts positions: 3000 transitions / 3 copies
    obs = np.zeros((n_envs, 8), np.float32)
    for p in range(positions):  # obs[0] tags (position, copy); the rest are demo states
        nxt = arm_demos.obs[(p * n_envs + np.arange(n_envs)) % len(arm_demos.obs)].copy()
        nxt[:, 0] = 1000 * p + np.arange(n_envs)
        buf.add(obs, nxt, np.zeros((n_envs, 2), np.float32), np.zeros(n_envs), np.zeros(n_envs),
                [{} for _ in range(n_envs)])
        obs = nxt
    assert buf.size_used == positions and buf.transitions_used == positions * n_envs
    fifo = recent_rows(buf, 7, "state")
    assert fifo.shape == (7, 8)  # exactly n transitions, although 7 is not a multiple of 3 ...
    tags = [(int(t) // 1000, int(t) % 1000) for t in fifo[:, 0]]
    assert tags == [(47, 2), (48, 0), (48, 1), (48, 2), (49, 0), (49, 1), (49, 2)]  # ... every copy, oldest first
    assert recent_rows(buf, 10_000, "state").shape == (positions * n_envs, 8)
    assert recent_rows(buf, 5, "state_action").shape == (5, 10)

    game = SmilingReward(arm_demos.obs, SmilingSection(expert_steps=50, score_hidden=32, score_batch=64,
                                                       learner_states=128), torch.device("cpu"))
    game.setup()
    assert game.update(1, buf)["learner_rounds"] == 1  # a learner round on the 3-copy FIFO
    buf.relabel = lambda s: game.reward(sample_inputs(s, "state"))
    batch = buf.sample(64)
    assert batch.rewards.shape == (64, 1) and torch.isfinite(batch.rewards).all()
    assert abs(float(batch.rewards.std()) - 0.1) < 0.02  # per-batch normalised
    sampled = {(int(t) % 1000) for t in buf.sample(200).next_observations[:, 0]}
    assert sampled == {0, 1, 2}  # batches draw from every copy


@pytest.mark.slow
def test_two_envs_exact_steps_one_update_per_env_step(arm_demos, tmp_path, monkeypatch):
    from smiling_ros.methods.smiling.buffer import RelabelingReplayBuffer
    from smiling_ros.methods.smiling.trainer import train

    batches = []  # (buffer's n_envs, relabelled reward shape, all finite) of every SAC minibatch
    sample = RelabelingReplayBuffer.sample

    def recording_sample(self, batch_size, env=None):
        s = sample(self, batch_size, env=env)
        batches.append((self.n_envs, tuple(s.rewards.shape), bool(torch.isfinite(s.rewards).all())))
        return s

    monkeypatch.setattr(RelabelingReplayBuffer, "sample", recording_sample)
    total, starts = 700, 300
    cfg = tiny_cfg(n_envs=2, total_steps=total, eval_every=total, eval_episodes=2, log_every=100,
                   learner_every=200, expert_steps=100)
    out = tmp_path / "run"
    events = []
    train(cfg, arm_demos, out, progress=False, callback=events.append)

    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["step"] == total and st.meta["sac"]["num_timesteps"] == total and st.meta["n_envs"] == 2
    # The buffer holds 350 positions x 2 copies, filled by two differently seeded simulators.
    assert st.meta["buffer"]["used"] == total // 2 and st.meta["buffer"]["n_envs"] == 2
    o = st.tensors["buffer.observations"]
    assert tuple(o.shape) == (total // 2, 2, 8)
    assert not torch.allclose(o[:, 0], o[:, 1])
    # Monitor episodes: each copy ran 350 steps = 3 whole episodes (one env would have finished 7).
    assert st.meta["sac"]["episode_num"] == 2 * ((total // 2) // EP_LEN) == 6
    # One gradient step per env step after learning_starts; the final checkpoint precedes the last
    # vectorised step's 2 updates.
    assert st.meta["sac"]["n_updates"] == total - starts - 2
    assert batches and {b[0] for b in batches} == {2}
    assert all(b[1] == (128, 1) and b[2] for b in batches)  # relabelled: (batch, 1), finite
    assert len(batches) == st.meta["sac"]["n_updates"] + 2
    # Counters stay in env steps: a log row every 100, the evaluation at the end, learner rounds
    # at 200, 400 and 600.
    logs = [e for e in events if "metrics" in e and "eval/mean_return" not in e["metrics"]]
    assert [e["step"] for e in logs] == list(range(100, total + 1, 100))
    assert logs[-1]["metrics"]["episodes"] == 6 and logs[-1]["metrics"]["ep_return"] < 0
    assert [e["step"] for e in events if "metrics" in e and "eval/mean_return" in e["metrics"]] == [total]
    assert st.meta["reward"]["rounds"] == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == total and s["n_envs"] == 2 and np.isfinite(s["reward_metrics"]["reward_raw_mean"])


@pytest.mark.slow
def test_resume_with_two_envs_reaches_same_step_count(arm_demos, tmp_path):
    from smiling_ros.methods.smiling.trainer import train

    cfg = tiny_cfg(n_envs=2, total_steps=600, checkpoint_every=200, eval_episodes=0, log_every=100,
                   expert_steps=50, learner_every=200)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, arm_demos, out, progress=False, callback=crash_after(500))
    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["step"] == 400 and st.meta["buffer"]["used"] == 200
    with pytest.raises(UserError, match=r"2 env copies .*resume with n_envs 2, not 3"):
        train(cfg, arm_demos, out, resume=True, progress=False, n_envs=3)

    one = tiny_cfg(n_envs=1, total_steps=600, checkpoint_every=200, eval_episodes=0, log_every=100,
                   expert_steps=50, learner_every=200)
    train(one, arm_demos, out, resume=True, progress=False)  # the run keeps its own 2 copies
    st2 = load_checkpoint(out / "state.safetensors")
    assert st2.meta["step"] == 600 and st2.meta["sac"]["num_timesteps"] == 600 and st2.meta["n_envs"] == 2
    assert st2.meta["buffer"]["used"] == 300 and tuple(st2.tensors["buffer.observations"].shape[:2]) == (300, 2)
    # The buffer's first 200 positions are the restored ones.
    assert torch.equal(st2.tensors["buffer.observations"][:200], st.tensors["buffer.observations"])
    assert st2.meta["reward"]["rounds"] > st.meta["reward"]["rounds"]
    steps = [int(r.split(",")[0]) for r in (out / "train.csv").read_text().splitlines()[1:]]
    assert steps == [100, 200, 300, 400, 500, 600]


def test_dac_with_three_envs_rounds_total_up(arm_demos, tmp_path, capfd):
    from smiling_ros.methods.smiling.dac import train_dac

    out = tmp_path / "dac"
    train_dac(tiny_cfg(eval_episodes=0, log_every=100), arm_demos, out, total_steps=500, progress=False, n_envs=3)
    assert "500 env steps is not a multiple of n_envs=3; running 501" in capfd.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "dac" and s["steps"] == 501 and s["n_envs"] == 3
    assert s["reward_metrics"]["disc_rounds"] >= 1 and np.isfinite(s["reward_metrics"]["disc_loss"])
    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["total_steps"] == 501 and tuple(st.tensors["buffer.observations"].shape[:2]) == (167, 3)


def test_cli_n_envs_option(arm_demos, tmp_path, capsys):
    import yaml

    from smiling_ros.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(eval_episodes=0, log_every=100).to_dict()))
    arm_demos.save(tmp_path / "demos")
    out = tmp_path / "run"
    base = ["--config", str(cfg), "--dataset", str(tmp_path / "demos"), "--no-progress"]
    assert main(["train-dac", *base, "--out", str(out), "--steps", "400", "--n-envs", "2"]) == 0
    assert "dac: 400 env steps" in capsys.readouterr().out
    st = load_checkpoint(out / "state.safetensors")
    assert st.meta["n_envs"] == 2 and st.meta["step"] == 400
    with pytest.raises(SystemExit) as exc:  # argparse: one line, status 2
        main(["train-smiling", *base, "--out", str(tmp_path / "x"), "--n-envs", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--n-envs: an integer >= 1, got '0'" in err
