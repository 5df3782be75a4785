"""DyDiff: a diffusion model over H-step state windows as a long-horizon dynamics model.

Parts of the world model (all trained from one dataset, saved in one ``dydiff`` checkpoint):

- window model  p(s_1..s_{H-1} | s0, a_0..a_{H-2}): a :class:`~smiling_ros.learn.diffusion.ScoreNet` over the
  flattened, z-scored offsets (s_i - s0) of the window, *conditioned* on [s0, a_0..a_{H-2}] (the last
  action a_{H-1} of an H-step window acts after s_{H-1} and cannot change it, so it is left out).
- a single-step dynamics ensemble (:mod:`smiling_ros.methods.dydiff.ensemble`) predicting s' - s;
- a reward model: a learned r(s, a) when the dataset carries rewards, otherwise (imitation from
  demos) a SMILING-style cost r(s) = -E_(t,eps)||eps_psi(s_t, t) - eps||^2 of a state diffusion model
  fitted to the demonstrations, evaluated at fixed (t, eps) draws so that it is deterministic.

Conditioning rather than inpainting: rollouts ask the window model about action sequences of the
*learning* policy, which differ from the data's. A model of the joint (states, actions) that is
clamped by replacement at each step sees the clamped entries only through noisy x_t and returns states
that agree poorly with off-distribution actions; a conditional model learns p(states | s0, actions),
exactly the quantity rollouts need, sampled with the shared ``ddpm_sample`` (its ``cond`` argument), and
its x holds the states alone.

Policy-injected rollouts (:meth:`WorldModel.rollout`), per start state s0: (1) roll the ensemble under
pi for H-1 steps; (2) K times: sample the window model given s0 and the current actions, average the
states with the previous ones (weight ``mix`` on the new sample), relabel a_i <- pi(s_i). Rollouts are
scored with the reward model and the best ``keep_fraction`` are kept.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.common import seed_everything
from smiling_ros.learn.diffusion import ScoreNet, denoising_loss, make_schedule
from smiling_ros.learn.fit import Fit, Optim, TrainResult, random_batches
from smiling_ros.learn.logger import RunLogger, log_path
from smiling_ros.learn.plots import plot_rows
from smiling_ros.methods.dydiff.config import DyDiffConfig, TD3BCConfig
from smiling_ros.methods.dydiff.ensemble import train_ensemble
from smiling_ros.methods.dydiff.model import (
    RewardModel,
    TerminationModel,
    WorldModel,
    X0Parameterised,
    windows,
    x0_loss,
)

__all__ = ["DyDiffConfig", "RewardModel", "TD3BCConfig", "TerminationModel", "WorldModel", "X0Parameterised", "fit",
           "make_schedule", "train_offline", "train_reward", "train_termination", "train_world_model", "windows"]


def train_reward(ds: Dataset, kind: str, steps: int, lr: float, batch_size: int, gen: torch.Generator,
                 obs_norm: Normalizer, act_norm: Normalizer, progress: bool = True, log: Optional[RunLogger] = None,
                 log_every: int = 100, step_offset: int = 0) -> RewardModel:
    tr = ds.transitions()
    if kind == "learned":
        if "reward" not in tr:
            raise UserError(f"{ds.meta.get('path', 'dataset')}: dydiff.reward is 'learned' but the dataset has no "
                            f"rewards (use 'cost' for demonstrations)")
        r = tr["reward"].astype(np.float32)
        rm = RewardModel("learned", ds.obs_dim, ds.act_dim, obs_norm=obs_norm, act_norm=act_norm,
                         r_mean=float(r.mean()), r_std=float(max(r.std(), 1e-3)))
        S, A = torch.as_tensor(tr["obs"]), torch.as_tensor(tr["act"])
        Y = torch.as_tensor((r - rm.r_mean) / rm.r_std)
    else:
        rm = RewardModel("cost", ds.obs_dim, ds.act_dim, obs_norm=obs_norm, act_norm=act_norm)
        S = torch.as_tensor(ds.obs)

    def compute_loss(idx: torch.Tensor) -> torch.Tensor:
        if kind == "learned":
            return ((rm.raw(S[idx], A[idx]) - Y[idx]) ** 2).mean()
        return denoising_loss(rm.net, rm.schedule, obs_norm.normalize(S[idx]))

    Fit(rm, compute_loss, Optim(lr), steps, params=rm.net.parameters(), name=f"dydiff: reward model ({kind})",
        logger=log, rename={"loss": "reward_loss"}, log_every=log_every, progress=progress,
        step_offset=step_offset).run(random_batches(len(S), batch_size, gen))
    if kind == "cost":
        # express the cost in units of its spread on the demonstrations (mean 0, std 1 on the data)
        with torch.no_grad():
            c = rm.raw(S[: min(len(S), 4096)], torch.zeros(min(len(S), 4096), ds.act_dim))
        rm.r_std = 1.0 / float(max(c.std().item(), 1e-6))
        rm.r_mean = -float(c.mean().item()) * rm.r_std
    rm.eval()
    return rm


def train_termination(ds: Dataset, max_episode_steps: Optional[int], steps: int, lr: float, batch_size: int,
                      gen: torch.Generator, obs_norm: Normalizer) -> Optional[TerminationModel]:
    """None when no episode ended before ``max_episode_steps`` (nothing to learn: no terminations)."""
    if not max_episode_steps or steps == 0:
        return None
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    pos = (ds.episode_ends - 1)[lengths < int(max_episode_steps)]
    if len(pos) == 0:
        return None
    neg = np.setdiff1d(np.arange(len(ds.obs)), pos)
    P, N = torch.as_tensor(ds.obs[pos]), torch.as_tensor(ds.obs[neg])
    tm = TerminationModel(ds.obs_dim, obs_norm=obs_norm)
    half = max(1, batch_size // 2)
    y = torch.cat([torch.ones(half), torch.zeros(half)])

    def balanced() -> torch.Tensor:  # balanced batches: terminal states are rare
        return torch.cat([P[torch.randint(0, len(P), (half,), generator=gen)],
                          N[torch.randint(0, len(N), (half,), generator=gen)]])

    Fit(tm, lambda x: torch.nn.functional.binary_cross_entropy_with_logits(tm.logit(x), y),
        Optim(lr, weight_decay=1e-4), steps, name="dydiff: termination model", progress=False).run(balanced)
    tm.eval()
    return tm


def train_world_model(ds: Dataset, cfg: DyDiffConfig, low: np.ndarray, high: np.ndarray, *, seed: int = 0,
                      log_path: Optional[str | Path] = None, progress: bool = True,
                      meta: Optional[dict[str, Any]] = None, max_episode_steps: Optional[int] = None) -> WorldModel:
    """Fit the window model, the ensemble, the reward model and (when episodes shorter than
    ``max_episode_steps`` show terminations) a termination model on ``ds``; returns the world model."""
    t0 = time.time()
    S_win, A_win = windows(ds, cfg.horizon)  # validates actions and lengths first
    gen = seed_everything(seed)
    H = cfg.horizon
    log = RunLogger(log_path, ["step", "window_loss", "ensemble_mse", "reward_loss", "lr"]) if log_path else None
    obs_norm = ds.obs_normalizer()
    act_norm = ds.act_normalizer()
    # --- window diffusion
    off = (S_win[:, 1:] - S_win[:, :1]).reshape(len(S_win), -1)
    win_norm = Normalizer.fit(off)
    X = torch.as_tensor(win_norm.normalize(off))
    C = torch.cat([obs_norm.normalize(torch.as_tensor(S_win[:, 0])),
                   act_norm.normalize(torch.as_tensor(A_win)).flatten(1)], -1)
    net = ScoreNet(X.shape[1], cond_dim=C.shape[1], hidden=cfg.hidden, layers=cfg.layers, time_dim=32)
    sched = make_schedule(cfg.T, cfg.schedule)

    def window_loss(idx: torch.Tensor) -> torch.Tensor:
        if cfg.predict == "x0":
            return x0_loss(net, sched, X[idx], C[idx], gen)
        return denoising_loss(net, sched, X[idx], C[idx])

    Fit(net, window_loss, Optim(cfg.lr, schedule="cosine", min_lr=0.05), cfg.steps, name="dydiff: window diffusion",
        logger=log, rename={"loss": "window_loss"}, log_every=cfg.log_every,
        progress=progress).run(random_batches(len(X), cfg.batch_size, gen))
    net.eval()
    # --- single-step ensemble
    tr = ds.transitions()
    ens = train_ensemble(tr["obs"], tr["act"], tr["next_obs"], cfg.ensemble_size, cfg.ensemble_hidden,
                         cfg.ensemble_layers, cfg.ensemble_steps, cfg.lr, cfg.batch_size, gen, progress, log,
                         cfg.log_every, cfg.steps)
    # --- reward
    kind = cfg.reward if cfg.reward != "auto" else ("learned" if ds.reward is not None else "cost")
    rew = train_reward(ds, kind, cfg.reward_steps, cfg.lr, cfg.batch_size, gen, obs_norm, act_norm, progress, log,
                       cfg.log_every, cfg.steps + cfg.ensemble_steps)
    term = train_termination(ds, max_episode_steps, cfg.reward_steps, cfg.lr, cfg.batch_size, gen, obs_norm)
    if log is not None:
        log.close()
        plot_rows(log.rows, ["window_loss", "ensemble_mse", "reward_loss"], Path(log.path).with_suffix(".png"),
                  "DyDiff world model", logy=True)
    std = obs_norm.std
    lo, hi = ds.obs.min(0) - cfg.support_margin * std, ds.obs.max(0) + cfg.support_margin * std
    starts = ds.obs[np.concatenate([[0], ds.episode_ends[:-1]]).astype(int)]
    halt = None
    if cfg.halt_disagreement > 0:
        seen = max(float(ens.disagreement(torch.as_tensor(tr["obs"][i:i + 8192]),
                                          torch.as_tensor(tr["act"][i:i + 8192])).max())
                   for i in range(0, len(tr["obs"]), 8192))
        halt = cfg.halt_disagreement * seen
    wm = WorldModel(net, sched, ens, rew, obs_norm, act_norm, win_norm, H, low, high, starts, lo, hi, cfg,
                    {"task": ds.meta.get("task", ""), "reward_kind": kind, "train_wall_s": 0.0, **(meta or {})}, term,
                    halt)
    wm.meta["train_wall_s"] = time.time() - t0
    return wm


# ----------------------------------------------------------------------------------------- offline RL
def train_offline(ds: Dataset, cfg: DyDiffConfig, low: np.ndarray, high: np.ndarray, *,
                  world_model: Optional[WorldModel] = None, seed: int = 0, steps: Optional[int] = None,
                  log_path: Optional[str | Path] = None, progress: bool = True,
                  meta: Optional[dict[str, Any]] = None, callback: Optional[Callable[[int, Any], None]] = None):
    """TD3+BC on the dataset, and (with ``world_model``) on DyDiff rollouts of the learning policy:
    every ``rollout_every`` steps ``rollouts_per_round`` rollouts from dataset states are generated,
    filtered and added to a FIFO model buffer; batches then mix ``real_fraction`` real and the rest
    synthetic transitions. Rewards: the dataset's, else the world model's reward model.

    Returns the :class:`~smiling_ros.methods.dydiff.td3bc.TD3BC` learner (``.policy()`` is an MlpPolicy)."""
    from smiling_ros.methods.dydiff.td3bc import TD3BC, ReplayBuffer

    gen = seed_everything(seed)
    tcfg = cfg.td3bc
    steps = tcfg.steps if steps is None else steps
    tr = ds.transitions()
    ds.require_actions("TD3+BC")
    if "reward" in tr:
        rew = tr["reward"]
    elif world_model is not None:
        rew = world_model.reward(torch.as_tensor(tr["obs"]), torch.as_tensor(tr["act"])).numpy()
    else:
        raise UserError(f"{ds.meta.get('path', 'dataset')}: the offline learner needs rewards: the dataset has none "
                        f"and no world model (train-dydiff) gives a reward model")
    done = np.zeros(len(tr["obs"]), np.float32)
    max_steps = (meta or {}).get("max_episode_steps")
    if max_steps:
        # the last transition of an episode shorter than the time limit ends in a terminal state
        lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
        last = np.cumsum(lengths - 1) - 1  # index of each episode's last transition
        done[last[(lengths >= 2) & (lengths - 1 < int(max_steps))]] = 1.0
    real = ReplayBuffer.from_arrays(tr["obs"], tr["act"], rew, tr["next_obs"], done)
    agent = TD3BC(ds.obs_dim, ds.act_dim, ds.obs_normalizer(), low, high, tcfg, gen,
                  meta={"method": "td3bc+dydiff" if world_model is not None else "td3bc", "seed": seed, **(meta or {})})
    synth = ReplayBuffer(ds.obs_dim, ds.act_dim, cfg.buffer_size) if world_model is not None else None
    log = RunLogger(log_path, ["step", "critic_loss", "actor_loss", "q", "bc", "synthetic", "kept"]) if log_path else None
    n_synth = int(round((1 - cfg.real_fraction) * tcfg.batch_size))
    all_states = torch.as_tensor(ds.obs)
    acc: dict[str, float] = {}
    n = 0
    bar = tqdm(range(steps), desc="offline learner (TD3+BC" + (" + DyDiff)" if synth is not None else ")"),
               disable=not progress, mininterval=1.0)
    kept = 0
    for step in bar:
        if synth is not None and world_model is not None and step % cfg.rollout_every == 0:
            s0 = all_states[torch.randint(0, len(all_states), (cfg.rollouts_per_round,), generator=gen)]
            t = world_model.filtered_transitions(s0, agent.act_torch, gen)
            kept = int(t["kept"])
            synth.add(t["obs"].numpy(), t["act"].numpy(), t["reward"].numpy(), t["next_obs"].numpy(),
                      t["done"].numpy())
        if synth is not None and len(synth) > 0 and n_synth > 0:
            b = ReplayBuffer.cat(real.sample(tcfg.batch_size - n_synth, gen), synth.sample(n_synth, gen))
        else:
            b = real.sample(tcfg.batch_size, gen)
        info = agent.update(b)
        for k, v in info.items():
            acc[k] = acc.get(k, 0.0) + v
        n += 1
        if (step + 1) % cfg.log_every == 0 or step == steps - 1:
            row = {k: v / n for k, v in acc.items()}
            row.update(synthetic=len(synth) if synth is not None else 0, kept=kept)
            if log is not None:
                log.log(step + 1, **row)
            bar.set_postfix(q=f"{row.get('q', 0):.1f}", bc=f"{row.get('bc', 0):.3f}")
            acc, n = {}, 0
        if callback is not None:
            callback(step + 1, agent)
    if log is not None:
        log.close()
        plot_rows(log.rows, ["critic_loss", "actor_loss", "q", "bc"], Path(log.path).with_suffix(".png"),
                  "TD3+BC" + (" + DyDiff rollouts" if synth is not None else ""))
    return agent


def fit(cfg: Any, dataset: Dataset, *, out: str | Path, env_fn: Any = None, callback: Any = None,
        section: Optional[DyDiffConfig] = None, seed: Optional[int] = None, policy_out: Optional[str | Path] = None,
        offline_steps: Optional[int] = None, rollouts: bool = True, progress: bool = True) -> TrainResult:
    """``train-dydiff``: the world model ``out`` (kind ``dydiff``, log ``OUT.train.csv``/``.png``) from
    ``cfg``'s ``dydiff`` section (or ``section``); with ``policy_out`` also TD3+BC on the data and (with
    ``rollouts``) DyDiff rollouts into that ``mlp_policy``, which is then the result's policy. ``env_fn``
    is unused (offline); ``callback({'step', 'checkpoint'})`` once per file written."""
    from smiling_ros.learn.checkpoint import checkpoint_path
    from smiling_ros.learn.common import offline_inputs

    sec = section if section is not None else cfg.section(DyDiffConfig, "dydiff")
    low, high, seed, task = offline_inputs(cfg, dataset, "train-dydiff", seed)
    out = checkpoint_path(out)
    wm = train_world_model(dataset, sec, low, high, seed=seed, log_path=log_path(out), progress=progress,
                           meta={"task": task, "dataset": str(dataset.meta.get("path", ""))},
                           max_episode_steps=cfg.task.max_episode_steps)
    path = wm.save(out, {"config": cfg.to_dict()})
    files = {"world_model": path, "log": log_path(out)}
    summary: dict[str, Any] = {"horizon": wm.H, "reward_kind": wm.meta["reward_kind"],
                               "train_wall_s": wm.meta["train_wall_s"]}
    if callback is not None:
        callback({"step": sec.steps, "checkpoint": str(path)})
    policy = path
    if policy_out is not None:
        pout = checkpoint_path(policy_out)
        agent = train_offline(dataset, sec, low, high, world_model=wm if rollouts else None, seed=seed,
                              steps=offline_steps, log_path=log_path(pout), progress=progress,
                              meta={"task": task, "max_episode_steps": cfg.task.max_episode_steps, "world_model": str(path)})
        policy = agent.policy().save(pout)
        files.update(policy=policy, policy_log=log_path(pout))
        summary["policy_method"] = agent.policy().meta["method"]
        if callback is not None:
            callback({"step": offline_steps or sec.td3bc.steps, "checkpoint": str(policy)})
    return TrainResult(policy, files, summary)
