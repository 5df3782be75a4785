"""BRIDGER end to end on the CPU: training, sources, the self-contained checkpoint through
load_policy, the train-bridger CLI, and bad input (nets are tiny; a few hundred steps)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smiling_ros.methods.bridger.policy import BridgerPolicy
from smiling_ros.methods.bridger.sources import CvaePolicy, GaussianSource, HeuristicSource, PolicySource
from smiling_ros.methods.bridger.train import BridgerConfig, CvaeConfig, make_source, train_bridger, train_cvae
from smiling_ros.learn.checkpoint import load_checkpoint
from smiling_ros.data.dataset import Dataset
from smiling_ros.errors import UserError
from smiling_ros.learn.policy import MlpActor, MlpPolicy, load_policy

TINY = BridgerConfig(train_steps=80, hidden=[32, 32], batch_size=64, log_every=20)


@pytest.fixture(scope="module")
def arm_ds():
    """Six scripted-expert episodes of the own task (both modes appear)."""
    from smiling_ros.envs import ARM_REACH, ScriptedExpert, make_env
    from smiling_ros.data.evaluation import run_episodes

    env = make_env(ARM_REACH, seed=0)
    eps = run_episodes(ScriptedExpert(seed=0), env, 6, seed=0, record=True)
    env.close()
    return Dataset.from_episodes([(e["obs"], e["act"]) for e in eps], {"task": ARM_REACH})


def _bounds(ds):
    return -np.ones(ds.act_dim, np.float32), np.ones(ds.act_dim, np.float32)


def _same_actions(p1, p2, obs, steps=3):
    p1.steps = p2.steps = steps
    p1.seed(7)
    p2.seed(7)
    p1.reset()
    p2.reset()
    for o in obs:
        np.testing.assert_allclose(p1.act(o), p2.act(o), rtol=1e-5, atol=1e-6)


def test_heuristic_round_trip_through_load_policy(arm_ds, tmp_path):
    src = HeuristicSource("arm_reach_straight_line")
    pol = train_bridger(arm_ds, src, TINY, *_bounds(arm_ds), progress=False, log_path=tmp_path / "log.csv")
    assert (tmp_path / "log.csv").read_text().count("\n") == 1 + TINY.train_steps // TINY.log_every
    assert (tmp_path / "log.png").stat().st_size > 0
    path = pol.save(tmp_path / "b.safetensors")
    (tmp_path / "b.json").unlink()  # the sidecar is for people; the safetensors header suffices
    loaded = load_policy(path, device="cpu", obs_dim=8, act_dim=2)
    assert isinstance(loaded, BridgerPolicy) and loaded.source.name == "heuristic"
    assert loaded.steps == TINY.steps
    _same_actions(pol, loaded, arm_ds.obs[:5])
    # steps is settable at run time and changes the result
    loaded.steps = 1
    loaded.seed(0)
    a1 = loaded.act(arm_ds.obs[40])
    loaded.steps = 10
    loaded.seed(0)
    assert not np.allclose(a1, loaded.act(arm_ds.obs[40]))
    # batches give one action per row, inside the bounds
    a = loaded.act(arm_ds.obs[:16])
    assert a.shape == (16, 2) and np.all(np.abs(a) <= 1.0)


def test_policy_and_cvae_sources_are_embedded(arm_ds, tmp_path):
    torch.manual_seed(0)
    mlp = MlpPolicy(MlpActor(8, 2, [16]), arm_ds.obs_normalizer(), *_bounds(arm_ds))
    mlp_path = mlp.save(tmp_path / "bc.safetensors")
    src = make_source(str(mlp_path), arm_ds, section=TINY)
    assert isinstance(src, PolicySource) and src.deterministic
    pol = train_bridger(arm_ds, src, TINY, *_bounds(arm_ds), progress=False)
    path = pol.save(tmp_path / "on_bc.safetensors")
    mlp_path.unlink()
    mlp_path.with_suffix(".json").unlink()
    loaded = load_policy(path, device="cpu")
    assert loaded.source.kind == "mlp_policy"
    _same_actions(pol, loaded, arm_ds.obs[:4])

    cvae = train_cvae(arm_ds, CvaeConfig(hidden=[32, 32], latent=4, train_steps=60, batch_size=64), progress=False)
    cvae_path = cvae.save(tmp_path / "cvae.safetensors")
    as_policy = load_policy(cvae_path, device="cpu")
    assert isinstance(as_policy, CvaePolicy)
    as_policy.seed(1)
    cvae.seed(1)
    np.testing.assert_allclose(as_policy.act(arm_ds.obs[:3]), cvae.act(arm_ds.obs[:3]), rtol=1e-5)
    src = make_source(str(cvae_path), arm_ds, section=TINY)
    assert src.name == "cvae" and not src.deterministic
    pol = train_bridger(arm_ds, src, TINY, *_bounds(arm_ds), progress=False)
    path = pol.save(tmp_path / "on_cvae.safetensors")
    cvae_path.unlink()
    _same_actions(pol, load_policy(path, device="cpu"), arm_ds.obs[:4])


def test_informative_source_beats_gaussian_at_few_steps():
    """Nonlinear expert a(o); a rough deterministic approximation of it as the source. After the
    same short training, BRIDGER from it is closer to the expert than from Gaussian noise at
    1 and 2 steps (and better than the source alone)."""
    rng = np.random.default_rng(0)

    def expert(o):
        return np.stack([np.sin(3 * o[:, 0]) * o[:, 1], np.cos(2 * o[:, 1]) + 0.5 * o[:, 2]], 1).astype(np.float32)

    class Rough:
        name, deterministic, obs_dim, act_dim = "rough", True, 3, 2

        def sample(self, obs):
            o = np.atleast_2d(obs)
            a = expert(o) + 0.15 * np.stack([np.cos(5 * o[:, 2]), np.sin(4 * o[:, 0])], 1)
            return a.astype(np.float32)

    def make(n):
        o = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        return Dataset.from_episodes([(o[i:i + 20], expert(o[i:i + 20])) for i in range(0, n, 20)])

    ds, test = make(2000), make(400)
    sec = BridgerConfig(train_steps=500, hidden=[64, 64], lr=3e-3, batch_size=128)
    err = {}
    for src in (GaussianSource(3, ds.act_normalizer(), 0), Rough()):
        pol = train_bridger(ds, src, sec, -3 * np.ones(2), 3 * np.ones(2), progress=False)
        for n in (1, 2):
            pol.steps = n
            pol.seed(0)
            a = pol.act_norm.unnormalize(pol.sample_normalized(test.obs))
            err[src.name, n] = float(np.linalg.norm(a - test.act, axis=1).mean())
    rough_alone = float(np.linalg.norm(Rough().sample(test.obs) - test.act, axis=1).mean())
    for n in (1, 2):
        assert err["rough", n] < 0.75 * err["gaussian", n], err
        assert err["rough", n] < rough_alone, (err, rough_alone)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_policy(arm_ds, tmp_path_factory):
    pol = train_bridger(arm_ds, HeuristicSource("arm_reach_straight_line"), TINY, *_bounds(arm_ds), progress=False)
    path = pol.save(tmp_path_factory.mktemp("ckpt") / "b.safetensors")
    return pol, path


def test_refuses_checkpoint_for_another_robot(small_policy):
    _, path = small_policy
    with pytest.raises(UserError, match="obs_dim is 8 but this robot/task has 11"):
        load_policy(path, device="cpu", obs_dim=11, act_dim=2)
    with pytest.raises(UserError, match="act_dim"):
        load_policy(path, device="cpu", obs_dim=8, act_dim=3)


def test_refuses_bad_observations_without_changing_state(small_policy, arm_ds):
    pol, _ = small_policy
    pol.reset()
    pol.act(arm_ds.obs[0])
    hist = pol._hist.copy()
    bad = arm_ds.obs[1].copy()
    bad[3] = np.nan
    with pytest.raises(UserError, match=r"NaN or inf \(element \(3,\)\)"):
        pol.act(bad)
    with pytest.raises(UserError, match="shape"):
        pol.act(arm_ds.obs[1][:5])
    with pytest.raises(UserError, match="NaN or inf"):
        pol.act(np.full((2, 8), np.inf))
    np.testing.assert_array_equal(pol._hist, hist)
    assert np.all(np.isfinite(pol.act(arm_ds.obs[1])))


def test_never_returns_non_finite_or_out_of_bounds(small_policy, arm_ds):
    pol, path = small_policy
    p = load_policy(path, device="cpu")
    with torch.no_grad():
        p.net.head.bias.add_(50.0)  # drives every sample far outside the bounds
    p._fwd = type(p._fwd)(p.net)
    p._grids.clear()
    p.steps = 3
    np.testing.assert_array_equal(p.act(arm_ds.obs[:8]), np.tile(p.high, (8, 1)))  # clamped, batch path
    np.testing.assert_array_equal(p.act(arm_ds.obs[0]), p.high)  # clamped, single (numpy) path
    with torch.no_grad():
        p.net.head.bias.fill_(float("nan"))  # a broken net: the sampler produces NaN
    p._fwd = type(p._fwd)(p.net)
    p._grids.clear()
    p.steps = 3
    with pytest.raises(UserError, match="non-finite"):
        p.act(arm_ds.obs[0])
    with pytest.raises(UserError, match="non-finite"):
        p.act(arm_ds.obs[:4])


def test_training_refuses_dataset_without_actions(arm_ds):
    state_only = Dataset(arm_ds.obs, None, arm_ds.episode_ends, {"path": "demos/"})
    with pytest.raises(UserError, match="demos/: BRIDGER needs actions"):
        train_bridger(state_only, GaussianSource(8, arm_ds.act_normalizer()), TINY, *_bounds(arm_ds), progress=False)


# ----------------------------------------------------------------------------- CLI
def test_train_bridger_cli(arm_ds, tmp_path, capsys):
    from smiling_ros.cli import main

    data = tmp_path / "demos"
    arm_ds.save(data)
    out = tmp_path / "out" / "arm.safetensors"
    rc = main(["train-bridger", "--config", "arm_reach", "--dataset", str(data), "--source", "heuristic",
               "--out", str(out), "--train-steps", "40", "--eval-episodes", "1", "--no-progress"])
    assert rc == 0
    for suffix in (".safetensors", ".json", ".train.csv", ".train.png", ".eval.json"):
        assert out.with_suffix(suffix).exists(), suffix
    ev = json.loads(out.with_suffix(".eval.json").read_text())
    assert [r["steps"] for r in ev["results"]] == [1, 2, 5, 10]
    assert all(sum(r["sides"].values()) == 1 for r in ev["results"])
    meta = load_checkpoint(out).meta
    assert meta["kind"] == "bridger" and meta["source"] == {"type": "heuristic", "heuristic": "arm_reach_straight_line"}

    # bad input: one line, exit 2, nothing overwritten
    before = out.read_bytes()
    state_only = tmp_path / "state_only"
    Dataset(arm_ds.obs, None, arm_ds.episode_ends, {}).save(state_only)
    rc = main(["train-bridger", "--config", "arm_reach", "--dataset", str(state_only), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "needs actions, but the dataset is state-only" in err and "Traceback" not in err
    rc = main(["train-bridger", "--config", "arm_reach", "--dataset", str(data), "--source", str(tmp_path / "nope.safetensors"),
               "--out", str(out)])
    assert rc == 2 and "neither gaussian, cvae, heuristic nor an existing checkpoint" in capsys.readouterr().err
    rc = main(["train-bridger", "--config", "arm_reach", "--dataset", str(data), "--source", str(out), "--out", str(out)])
    assert rc == 2 and "cannot be a source" in capsys.readouterr().err
    other = MlpPolicy(MlpActor(11, 3, [8]), Dataset(np.zeros((4, 11)), np.zeros((4, 3)), [4]).obs_normalizer(),
                      -np.ones(3), np.ones(3)).save(tmp_path / "hopper_bc.safetensors")
    rc = main(["train-bridger", "--config", "arm_reach", "--dataset", str(data), "--source", str(other), "--out", str(out)])
    assert rc == 2 and "obs_dim is 11 but this robot/task has 8" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_window_and_chunk(arm_ds, tmp_path):
    """obs_window 2, chunk 3, execute 2: one plan (one source sample) per two calls; round trip."""
    sec = BridgerConfig(train_steps=40, hidden=[32], batch_size=32, obs_window=2, chunk=3, execute=2)
    src = HeuristicSource("arm_reach_straight_line")
    pol = train_bridger(arm_ds, src, sec, *_bounds(arm_ds), progress=False)
    assert (pol.net.x_dim, pol.net.cond_dim) == (6, 16)
    calls = []
    inner = pol.source.sample
    pol.source.sample = lambda o: calls.append(1) or inner(o)
    pol.reset()
    acts = [pol.act(o) for o in arm_ds.obs[:5]]
    assert len(calls) == 3 and all(a.shape == (2,) for a in acts)
    assert pol._hist.shape == (1, 2, 8)
    pol.source.sample = inner
    loaded = load_policy(pol.save(tmp_path / "chunk.safetensors"), device="cpu")
    assert (loaded.window, loaded.chunk, loaded.execute) == (2, 3, 2)
    _same_actions(pol, loaded, arm_ds.obs[:5])


def test_checkpoint_may_name_only_registered_heuristics(small_policy, tmp_path):
    from smiling_ros.learn.checkpoint import save_checkpoint

    _, path = small_policy
    ck = load_checkpoint(path)
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "versions")}
    meta["source"] = {"type": "heuristic", "heuristic": "os:system"}
    bad = save_checkpoint(tmp_path / "evil.safetensors", ck.tensors, meta)
    with pytest.raises(UserError, match="unknown heuristic 'os:system'"):
        load_policy(bad, device="cpu")
    meta["source"] = {"type": "policy", "kind": "bridger", "meta": {}}
    bad = save_checkpoint(tmp_path / "nested.safetensors", ck.tensors, meta)
    with pytest.raises(UserError, match="unsupported kind 'bridger'"):
        load_policy(bad, device="cpu")
    meta["source"] = {"type": "heuristic", "heuristic": "arm_reach_straight_line"}
    meta["net"] = {**meta["net"], "hidden": [7]}
    bad = save_checkpoint(tmp_path / "shape.safetensors", ck.tensors, meta)
    with pytest.raises(UserError, match="inconsistent bridger checkpoint"):
        load_policy(bad, device="cpu")
