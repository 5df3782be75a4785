"""evaluate(), reference returns, and the eval / rollout / train-expert commands (real MuJoCo, SB3)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smiling_ros.cli import main
from smiling_ros.config import load_config
from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.policy import MlpActor, MlpPolicy

REPO = Path(__file__).resolve().parents[1]

ARM = "smiling_ros/ArmReach-v0"


def arm_env_fn():
    from smiling_ros.envs import make_env

    return make_env(ARM)


def random_mlp_policy(obs_dim, act_dim, task, cfg=None):
    torch.manual_seed(0)
    meta = {"task": task, "method": "test"}
    if cfg is not None:
        meta["config"] = cfg.to_dict()
    return MlpPolicy(MlpActor(obs_dim, act_dim, [16]), Normalizer.identity(obs_dim), -np.ones(act_dim),
                     np.ones(act_dim), meta)


def test_evaluate_scripted_and_random_with_normalised_return():
    from smiling_ros.data.evaluation import evaluate, normalized_return, reference_returns

    refs = reference_returns(arm_env_fn, "scripted", episodes=3, seed=10, task=ARM)
    assert refs["expert"] > refs["random"] + 20 and refs["expert_source"] == "scripted"
    res = evaluate("scripted", arm_env_fn, episodes=3, seed=50, references=refs)
    assert set(res) >= {"returns", "mean_return", "success_rate", "normalized_return", "episode_lengths"}
    assert len(res["returns"]) == 3 and res["episode_lengths"] == [100, 100, 100]
    assert res["success_rate"] == 1.0 and res["normalized_return"] > 0.85
    rnd = evaluate("random", arm_env_fn, episodes=3, seed=50, references=refs)
    assert rnd["success_rate"] == 0.0 and abs(rnd["normalized_return"]) < 0.3
    assert normalized_return(refs["expert"], refs) == pytest.approx(1.0)
    assert normalized_return(refs["random"], refs) == pytest.approx(0.0)
    # deterministic given the seed
    assert evaluate("scripted", arm_env_fn, 2, seed=7)["returns"] == evaluate("scripted", arm_env_fn, 2, seed=7)["returns"]


def test_references_prefer_dataset_expert_return_and_cache(tmp_path):
    from smiling_ros.data.evaluation import reference_returns

    ds = Dataset(np.zeros((10, 8), np.float32), None, np.array([10]), {"task": ARM, "expert_return": -9.5})
    cache = tmp_path / "references.json"
    refs = reference_returns(arm_env_fn, "scripted", episodes=2, dataset=ds, cache=cache, task=ARM)
    assert refs["expert"] == -9.5 and json.loads(cache.read_text())["expert"] == -9.5
    assert reference_returns(lambda: 1 / 0, None, cache=cache, task=ARM)["expert"] == -9.5  # cached: no env made


def test_eval_cli_json_from_embedded_config(tmp_path, capsys):
    cfg = load_config("config/arm_reach.yaml")
    cfg.expert = {"checkpoint": "scripted", "reference_episodes": 2}
    path = random_mlp_policy(8, 2, ARM, cfg).save(tmp_path / "p.safetensors")
    assert main(["eval", "--checkpoint", str(path), "--episodes", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == ARM and len(doc["returns"]) == 2 and doc["episode_lengths"] == [100, 100]
    assert doc["success_rate"] is not None and doc["references"]["expert_source"] == "scripted"
    expected = (doc["mean_return"] - doc["references"]["random"]) / (doc["references"]["expert"] - doc["references"]["random"])
    assert doc["normalized_return"] == pytest.approx(expected)


def test_eval_refuses_checkpoint_of_another_task(tmp_path, capsys):
    path = random_mlp_policy(11, 3, "Hopper-v5").save(tmp_path / "hopper.safetensors")
    assert main(["eval", "--checkpoint", str(path), "--config", "config/arm_reach.yaml", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hopper.safetensors" in err and "Hopper-v5" in err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--config", "arm_reach"]) == 2


@pytest.mark.slow
def test_train_expert_rollout_and_bad_rollout_out(tmp_path, capsys):
    from smiling_ros.learn.policy import load_policy

    cfgp = tmp_path / "pend.yaml"
    cfgp.write_text(
        "task: {env: Pendulum-v1, max_episode_steps: 100}\n"
        "observation: [{topic: /observation}]\naction: [{topic: /cmd}]\n"
        "smiling: {eval_episodes: 1}\n"
        "expert: {reference_episodes: 1, eval_every: 300, eval_episodes: 1, checkpoint_every: 300,\n"
        "         sac: {hidden: [32, 32], learning_starts: 100, batch_size: 64}}\n")
    ck = tmp_path / "pend_expert.safetensors"
    assert main(["train-expert", "--config", str(cfgp), "--steps", "300", "--out", str(ck), "--no-progress",
                 "--eval-episodes", "2"]) == 0
    pol = load_policy(ck)
    assert pol.obs_dim == 3 and pol.act_dim == 1 and "expert_return" in pol.meta
    assert (tmp_path / "pend_expert_run" / "state.safetensors").exists()
    out = tmp_path / "demos"
    assert main(["rollout", "--config", str(cfgp), "--policy", str(ck), "--episodes", "2", "--out", str(out)]) == 0
    ds = Dataset.load(out)
    assert ds.num_episodes == 2 and len(ds.obs) == 200 and ds.act.shape == (200, 1)
    assert ds.meta["expert_return"] == pytest.approx(np.mean(ds.meta["returns"]))
    assert abs(ds.meta["expert_return"] - pol.meta["expert_return"]) < 1000
    capsys.readouterr()
    # an existing dataset is never overwritten without --overwrite
    assert main(["rollout", "--config", str(cfgp), "--policy", "random", "--episodes", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert Dataset.load(out).num_episodes == 2
    # a checkpoint of another task is refused by rollout too
    assert main(["rollout", "--config", "config/arm_reach.yaml", "--policy", str(ck), "--episodes", "1",
                 "--out", str(tmp_path / "x")]) == 2


def test_rollout_scripted_arm_state_only(tmp_path):
    out = tmp_path / "arm"
    assert main(["rollout", "--config", "config/arm_reach.yaml", "--policy", "scripted", "--episodes", "3",
                 "--out", str(out), "--state-only"]) == 0
    ds = Dataset.load(out)
    assert ds.act is None and ds.obs.shape == (300, 8) and ds.success.all()
    assert ds.meta["task"] == ARM and ds.meta["expert_success_rate"] == 1.0


def test_resolve_policy_errors():
    from smiling_ros.data.evaluation import resolve_policy

    import gymnasium

    env = gymnasium.make("Pendulum-v1")
    with pytest.raises(UserError, match="no scripted expert"):
        resolve_policy("scripted", env)


def test_shipped_expert_checkpoint_still_loads():
    """Checkpoints written by earlier versions keep loading: the file-format names are fixed strings,
    not module paths (the committed Hopper expert was written before the package was reorganised)."""
    from smiling_ros.learn.policy import load_policy

    policy = load_policy(REPO / "sim" / "experts" / "hopper.safetensors", device="cpu")
    assert (policy.obs_dim, policy.act_dim) == (11, 3)
    action = policy.act(np.zeros(11, np.float32))
    assert action.shape == (3,) and np.all(np.isfinite(action))
