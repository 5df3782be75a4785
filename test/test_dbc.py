"""DBC: the diffusion term reaches the policy through the frozen joint model, changes what it learns
compared with plain BC, its losses fall, and `train-dbc` writes an mlp_policy others can load."""
from __future__ import annotations

import csv
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

from smiling_ros.cli import main
from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.common import collect_dataset
from smiling_ros.methods.dbc.train import DBCConfig, dbc_losses, train_dbc
from smiling_ros.learn.policy import load_policy

LOW, HIGH = np.array([-2.0], np.float32), np.array([2.0], np.float32)


def _pendulum_expert(o):
    """Energy-pumping swing-up with a bang-bang flavour: bimodal actions near the bottom."""
    th, thdot = np.arctan2(o[1], o[0]), o[2]
    return np.clip([2.0 * np.sign(thdot + 1e-3) if o[0] < 0 else -3.0 * np.sin(th) - 0.8 * thdot], -2, 2)


@pytest.fixture(scope="module")
def demos() -> Dataset:
    env = gym.make("Pendulum-v1", max_episode_steps=60)
    return collect_dataset(env, _pendulum_expert, 12, seed=0, task="Pendulum-v1")


def small_cfg(**kw) -> DBCConfig:
    base = dict(T=1000, dm_hidden=64, dm_layers=2, dm_steps=800, hidden=[64, 64], steps=400, batch_size=128,
                lambda_dm=2.0, log_every=50)
    base.update(kw)
    return DBCConfig(**base)


@pytest.mark.slow
def test_diffusion_term_changes_policy_and_losses_fall(demos, tmp_path):
    dbc = train_dbc(demos, small_cfg(), LOW, HIGH, seed=3, progress=False, log_path=tmp_path / "dbc.train.csv")
    bc = train_dbc(demos, small_cfg(lambda_dm=0.0), LOW, HIGH, seed=3, progress=False)
    assert dbc.policy.meta["method"] == "dbc" and bc.policy.meta["method"] == "bc"
    a_dbc, a_bc = dbc.policy.act(demos.obs), bc.policy.act(demos.obs)
    assert np.abs(a_dbc - a_bc).max() > 1e-2, "the diffusion term left the policy identical to BC"
    # stage 1 (joint diffusion) and stage 2 (policy) losses fall
    rows = list(csv.DictReader(open(tmp_path / "dbc.train.csv")))
    dm = [float(r["dm_loss"]) for r in rows if r["dm_loss"]]
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    assert dm[-1] < 0.7 * dm[0]
    assert loss[-1] < 0.5 * loss[0]
    assert (tmp_path / "dbc.train.png").stat().st_size > 0


def test_dm_gradient_flows_through_frozen_net_into_policy(demos):
    res = train_dbc(demos, small_cfg(steps=1), LOW, HIGH, seed=0, progress=False)
    pol, dm = res.policy, res.dm
    assert all(not p.requires_grad for p in dm.net.parameters())
    s, a = torch.as_tensor(demos.obs[:256]), torch.as_tensor(demos.act[:256])
    pol.actor.zero_grad()
    cfg = small_cfg(normalize_dm=False)  # L_agent alone: never clamped to zero
    terms = dbc_losses(pol, dm, s, a, Normalizer.fit(demos.act), cfg, torch.Generator().manual_seed(0))
    (terms["loss"] - terms["bc"]).backward()  # the diffusion term only
    g = sum(p.grad.abs().sum().item() for p in pol.actor.parameters() if p.grad is not None)
    assert g > 0
    assert all(p.grad is None for p in dm.net.parameters())


def test_state_noise_evaluates_the_diffusion_term_off_the_recorded_states(demos):
    res = train_dbc(demos, small_cfg(steps=1), LOW, HIGH, seed=0, progress=False)
    s, a = torch.as_tensor(demos.obs[:256]), torch.as_tensor(demos.act[:256])
    norm = Normalizer.fit(demos.act)
    at = lambda noise: dbc_losses(res.policy, res.dm, s, a, norm, small_cfg(state_noise=noise, normalize_dm=False),  # noqa: E731
                                  torch.Generator().manual_seed(0))
    clean, jittered = at(0.0), at(0.5)
    assert torch.equal(clean["bc"], jittered["bc"])  # BC stays on the recorded pairs
    assert not torch.isclose(clean["agent"], jittered["agent"])
    assert not torch.isclose(clean["expert"], jittered["expert"])  # both terms move to the jittered state
    res.policy.actor.zero_grad()
    (jittered["loss"] - jittered["bc"]).backward()
    assert sum(p.grad.abs().sum().item() for p in res.policy.actor.parameters() if p.grad is not None) > 0
    with pytest.raises(UserError, match="state_noise"):
        small_cfg(state_noise=-0.1).validate("dbc")


def _config(tmp_path, extra: str = "") -> str:
    p = tmp_path / "pend.yaml"
    p.write_text(textwrap.dedent("""
        task: {env: Pendulum-v1, max_episode_steps: 60}
        rate_hz: 20.0
        observation:
          - {topic: /observation, field: data}
        action:
          - {topic: /forward_command_controller/commands, field: data}
        dbc: {T: 1000, dm_hidden: 64, dm_layers: 2, dm_steps: 300, hidden: [64, 64], steps: 200, lambda_dm: 1.0}
        """) + extra)
    return str(p)


@pytest.mark.slow
def test_cli_writes_loadable_mlp_policy(demos, tmp_path, capsys):
    demos.save(tmp_path / "demos")
    cfg = _config(tmp_path)
    out = tmp_path / "dbc.safetensors"
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "demos"), "--out", str(out),
                 "--steps", "150", "--quiet"]) == 0
    for name in ("dbc.safetensors", "dbc.json", "dbc.dm.safetensors", "dbc.train.csv", "dbc.train.png"):
        assert (tmp_path / name).exists(), name
    pol = load_policy(out, device="cpu", obs_dim=3, act_dim=1)
    a = pol.act(demos.obs[:5])
    assert a.shape == (5, 1) and np.all(a >= -2) and np.all(a <= 2)
    assert pol.meta["method"] == "dbc" and pol.meta["task"] == "Pendulum-v1"
    # reuse the frozen model; --no-dm is plain BC
    out2 = tmp_path / "reuse.safetensors"
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "demos"), "--out", str(out2),
                 "--steps", "50", "--dm", str(tmp_path / "dbc.dm.safetensors"), "--quiet"]) == 0
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "demos"), "--out", str(tmp_path / "bc"),
                 "--steps", "50", "--no-dm", "--quiet"]) == 0
    assert load_policy(tmp_path / "bc.safetensors", device="cpu").meta["method"] == "bc"


def test_bad_input_is_one_line_error(demos, tmp_path, capsys):
    cfg = _config(tmp_path)
    Dataset(demos.obs, None, demos.episode_ends, {"task": "Pendulum-v1"}).save(tmp_path / "states_only")
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "states_only"),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs actions" in err and "states_only" in err and len(err.splitlines()) == 1
    # a dataset of another task
    Dataset(demos.obs, demos.act, demos.episode_ends, {"task": "Hopper-v5"}).save(tmp_path / "other")
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "other"), "--out", str(tmp_path / "x")]) == 2
    assert "Hopper-v5" in capsys.readouterr().err
    # a reused diffusion model of other dims
    from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet
    from smiling_ros.methods.dbc.train import JointDiffusion

    JointDiffusion(ScoreNet(6, hidden=8), NoiseSchedule(10), Normalizer.identity(6), 4, 2).save(tmp_path / "dm6")
    Dataset(demos.obs, demos.act, demos.episode_ends, {"task": "Pendulum-v1"}).save(tmp_path / "ok")
    assert main(["train-dbc", "--config", cfg, "--dataset", str(tmp_path / "ok"), "--out", str(tmp_path / "x"),
                 "--dm", str(tmp_path / "dm6.safetensors")]) == 2
    assert "obs_dim is 4" in capsys.readouterr().err
    # unknown config key in the dbc section
    p = tmp_path / "bad.yaml"
    p.write_text(open(cfg).read().replace("lambda_dm: 1.0", "lambda_dm: 1.0, lamda: 3"))
    assert main(["train-dbc", "--config", str(p), "--dataset", str(tmp_path / "states_only"), "--out", str(tmp_path / "x")]) == 2
    assert "lamda" in capsys.readouterr().err


def test_dbc_and_bc_of_one_seed_differ_only_by_the_diffusion_term(demos):
    """Same seed: the same initial policy and batches whether or not stage 1 ran, so a vanishing
    lambda gives BC's policy (the ablation is paired), while the real lambda does not."""
    cfg = small_cfg(dm_steps=60, steps=120)
    bc = train_dbc(demos, small_cfg(dm_steps=60, steps=120, lambda_dm=0.0), LOW, HIGH, seed=5, progress=False)
    tiny = train_dbc(demos, small_cfg(dm_steps=60, steps=120, lambda_dm=1e-9), LOW, HIGH, seed=5, progress=False)
    assert tiny.dm is not None and bc.dm is None
    assert np.abs(tiny.policy.act(demos.obs) - bc.policy.act(demos.obs)).max() < 1e-3
    # reusing the stage-1 model gives the same run as training it here
    again = train_dbc(demos, cfg, LOW, HIGH, seed=5, dm=tiny.dm, progress=False)
    fresh = train_dbc(demos, cfg, LOW, HIGH, seed=5, progress=False)
    assert np.allclose(again.policy.act(demos.obs), fresh.policy.act(demos.obs), atol=1e-5)


def test_dbc_policy_deploys_through_the_controller_and_sources_bridger(demos, tmp_path):
    """The DBC checkpoint is what the controller publishes from, and a BRIDGER source."""
    import yaml

    from smiling_ros.methods.bridger.sources import PolicySource
    from smiling_ros.methods.bridger.train import BridgerConfig, make_source, train_bridger
    from smiling_ros.config import FieldSpec
    from smiling_ros.control import ControlLoop, load_controller_policy, make_assembler, resolve_limits, \
        resolve_settings

    demos.save(tmp_path / "demos")
    out = tmp_path / "dbc.safetensors"
    assert main(["train-dbc", "--config", _config(tmp_path), "--dataset", str(tmp_path / "demos"), "--out", str(out),
                 "--steps", "100", "--quiet"]) == 0
    robot = tmp_path / "pendulum_robot.yaml"
    robot.write_text(yaml.safe_dump({
        "rate_hz": 20.0, "observation": [{"topic": "/observation", "type": "std_msgs/msg/Float64MultiArray",
                                          "field": "data"}],
        "action": [{"topic": "/cmd", "field": "data"}], "limits": {"action_low": [-0.5], "action_high": [0.5]}}))
    settings = resolve_settings(str(robot), str(out), {})
    pol = load_controller_policy(str(out), settings, None)
    assert pol.meta["method"] == "dbc" and pol.obs_dim == 3
    spec = FieldSpec(topic="/observation", type="std_msgs/msg/Float64MultiArray", field="data")
    low, high = resolve_limits(settings.config, pol, str(out))
    loop = ControlLoop(pol, make_assembler([spec], pol.obs_dim), low, high, settings.period_ns)

    class Msg:  # the attribute the field mapping reads
        __msgtype__ = "std_msgs/msg/Float64MultiArray"

        def __init__(self, data):
            self.data = data

    o = demos.obs[7]
    loop.on_message("/observation", Msg(list(map(float, o))), 0)
    cmd = loop.tick(1).action
    np.testing.assert_allclose(cmd, np.clip(pol.act(o), -0.5, 0.5), rtol=1e-5)
    # BRIDGER starts from the DBC policy's actions
    src = make_source(str(out), demos, section=BridgerConfig(train_steps=40, hidden=[32, 32], batch_size=64))
    assert isinstance(src, PolicySource) and src.deterministic
    np.testing.assert_allclose(src.policy.act(demos.obs[:4]), pol.act(demos.obs[:4]), rtol=1e-5)
    bridger = train_bridger(demos, src, BridgerConfig(train_steps=40, hidden=[32, 32], batch_size=64, log_every=20),
                            LOW, HIGH, progress=False)
    a = bridger.act(demos.obs[:5])
    assert a.shape == (5, 1) and np.all(np.abs(a) <= 2)
