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

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smiling_ros.config import positive
from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import Checkpoint, load_checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.learn.common import TrainLog, batches, seed_everything
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, ddpm_sample, denoising_loss, per_sample_denoising_error
from smiling_ros.learn.policy import mlp
from smiling_ros.methods.dydiff.ensemble import DynamicsEnsemble, train_ensemble


def make_schedule(T: int, kind: str) -> NoiseSchedule:
    """The window model's schedule. 'linear' scales the DDPM betas (1e-4 .. 0.02 at T = 1000) by 1000/T so
    that a short chain still ends in pure noise (abar_T ~ 1e-5); 'cosine' is the core's cosine schedule,
    whose last beta is clamped to 0.999 and so divides the final step by sqrt(1e-3), amplifying any
    error of the last noise prediction ~30-fold when sampling without x0 clipping."""
    if kind == "linear":
        return NoiseSchedule(T, "linear", 1e-4 * 1000 / T, min(0.02 * 1000 / T, 0.5))
    return NoiseSchedule(T, kind)


class X0Parameterised(nn.Module):
    """Reads a ScoreNet's output as a prediction of the clean window x0 and returns the noise it implies,
    eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t), so the shared ``ddpm_sample`` runs unchanged.

    Why: an eps-predicting MLP over a long flattened window has to reproduce x_t almost exactly at high
    noise levels; its residual error there is fed back at every ancestral step and the chain drifts
    (measured on Reacher-v5 windows: sampled states 7 stds off with eps-prediction, vs well inside one
    with x0-prediction at the same budget). Predicting x0 (as trajectory diffusion models do) makes
    the high-noise steps exact by construction."""

    def __init__(self, net: ScoreNet, schedule: NoiseSchedule):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        ab = self.schedule.abar[t].unsqueeze(-1)
        return (x - ab.sqrt() * self.net(x, t, cond)) / (1 - ab).sqrt()


def x0_loss(net: ScoreNet, schedule: NoiseSchedule, x0: torch.Tensor, cond: torch.Tensor,
            gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """E_{t, eps} ||net(x_t, t, cond) - x0||^2 (mean over dims and batch)."""
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    return ((net(schedule.q_sample(x0, t, eps), t, cond) - x0) ** 2).mean()


PolicyFn = Callable[[torch.Tensor], torch.Tensor]  # (B, ds) robot units -> (B, da) robot units


@dataclass
class TD3BCConfig:
    """TD3+BC (Fujimoto & Gu 2021) hyper-parameters (``dydiff.td3bc``)."""

    steps: int = 50000
    batch_size: int = 256
    alpha: float = 2.5  # Q weight lambda = alpha / mean|Q|
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    policy_noise: float = 0.2  # target policy smoothing, in [-1, 1] action units
    noise_clip: float = 0.5
    policy_freq: int = 2
    hidden: list[int] = field(default_factory=lambda: [256, 256])

    def validate(self, where: str) -> None:
        for name in ("steps", "batch_size", "policy_freq"):
            positive(getattr(self, name), where, name)
        if not 0 < self.gamma < 1 or not 0 < self.tau <= 1:
            raise UserError(f"{where}: gamma must be in (0, 1) and tau in (0, 1]")


@dataclass
class DyDiffConfig:
    """The ``dydiff`` section of a config file."""

    horizon: int = 32  # H: window length in steps (paper 50..100; shorter keeps CPU training short)
    T: int = 50  # diffusion steps of the window model
    schedule: str = "linear"  # linear (betas scaled to T) | cosine
    predict: str = "x0"  # window net output: x0 (clean window) | eps (noise)
    hidden: int = 512  # window score net
    layers: int = 3
    steps: int = 20000  # window model gradient steps
    lr: float = 1e-3
    batch_size: int = 256
    ensemble_size: int = 5
    ensemble_hidden: int = 200
    ensemble_layers: int = 3
    ensemble_steps: int = 10000
    reward: str = "auto"  # auto (learned if the dataset has rewards, else cost) | learned | cost
    reward_steps: int = 5000
    refinements: int = 2  # K
    mix: float = 0.5  # weight of each new window sample when averaging with the previous states
    keep_fraction: float = 0.6  # best rollouts kept, by summed reward
    rollouts_per_round: int = 256
    rollout_every: int = 2000  # offline-learner steps between rollout rounds
    real_fraction: float = 0.6  # share of real transitions in each offline-learner batch
    buffer_size: int = 200000  # synthetic transitions kept (FIFO)
    support_margin: float = 1.0  # states beyond data min/max by this many stds are out of support
    # The model halts where the ensemble disagrees more than this multiple of the most it disagrees on
    # any recorded transition (0: never): the env terminates there, rollouts are cut there.
    halt_disagreement: float = 1.0
    env_horizon: int = 0  # world-model env episode length; 0: task.max_episode_steps, else 1000
    env_refine: bool = True  # world-model env: correct the ensemble with the window model every H-1 steps
    log_every: int = 100
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)

    def validate(self, where: str) -> None:
        if self.horizon < 2:
            raise UserError(f"{where}.horizon: must be >= 2, got {self.horizon}")
        for name in ("T", "hidden", "layers", "batch_size", "ensemble_size", "ensemble_hidden", "ensemble_layers",
                     "rollouts_per_round", "rollout_every", "buffer_size", "log_every"):
            positive(getattr(self, name), where, name)
        for name in ("steps", "ensemble_steps", "reward_steps", "refinements", "env_horizon"):
            positive(getattr(self, name), where, name, allow_zero=True)
        positive(self.halt_disagreement, where, "halt_disagreement", allow_zero=True)
        for name in ("mix", "keep_fraction", "real_fraction"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise UserError(f"{where}.{name}: must be in [0, 1], got {v}")
        if self.schedule not in ("linear", "cosine"):
            raise UserError(f"{where}.schedule: 'linear' or 'cosine', got '{self.schedule}'")
        if self.predict not in ("x0", "eps"):
            raise UserError(f"{where}.predict: 'x0' or 'eps', got '{self.predict}'")
        if self.reward not in ("auto", "learned", "cost"):
            raise UserError(f"{where}.reward: 'auto', 'learned' or 'cost', got '{self.reward}'")


# ----------------------------------------------------------------------------------------- data
def windows(ds: Dataset, H: int) -> tuple[np.ndarray, np.ndarray]:
    """All H-step windows inside episodes: states (W, H, ds), actions (W, H-1, da).

    Raises UserError when no episode is long enough."""
    act = ds.require_actions("DyDiff")
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    name = ds.meta.get("path", "dataset")
    if len(lengths) == 0 or lengths.max() < H:
        raise UserError(f"{name}: too few transitions for the window length: dydiff.horizon is {H} steps but the "
                        f"longest episode has {int(lengths.max()) if len(lengths) else 0}; lower dydiff.horizon "
                        f"or record longer episodes")
    starts = np.concatenate([np.arange(s.start, s.stop - H + 1) for s in ds.episode_slices() if s.stop - s.start >= H])
    idx = starts[:, None] + np.arange(H)[None]
    return ds.obs[idx], act[idx[:, :-1]]


# ----------------------------------------------------------------------------------------- reward
class RewardModel(nn.Module):
    """r(s, a) in reward units: (B,). ``kind`` 'learned' (MLP regression on dataset rewards) or 'cost'
    (negative denoising error of a state diffusion model of the demonstrations; ignores a)."""

    def __init__(self, kind: str, obs_dim: int, act_dim: int, hidden: int = 256, T: int = 100, n_probe: int = 16,
                 obs_norm: Optional[Normalizer] = None, act_norm: Optional[Normalizer] = None,
                 r_mean: float = 0.0, r_std: float = 1.0):
        super().__init__()
        self.kind, self.obs_dim, self.act_dim, self.hidden, self.T, self.n_probe = kind, obs_dim, act_dim, hidden, T, n_probe
        self.obs_norm = obs_norm or Normalizer.identity(obs_dim)
        self.act_norm = act_norm or Normalizer.identity(act_dim)
        self.r_mean, self.r_std = float(r_mean), float(r_std)
        if kind == "learned":
            self.net = mlp([obs_dim + act_dim, hidden, hidden, 1], "mish")
        else:
            self.net = ScoreNet(obs_dim, hidden=hidden, layers=2, time_dim=16)
            self.schedule = make_schedule(T, "linear")
            # fixed probes (t, eps): the cost is deterministic and low-variance
            g = torch.Generator().manual_seed(1234)
            t_max = max(1, self.schedule.informative_timesteps(0.05))
            self.register_buffer("probe_t", torch.linspace(0, t_max - 1, n_probe).round().long())
            self.register_buffer("probe_eps", torch.randn(n_probe, obs_dim, generator=g))

    def hparams(self) -> dict:
        return dict(kind=self.kind, obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, T=self.T,
                    n_probe=self.n_probe, r_mean=self.r_mean, r_std=self.r_std,
                    obs_norm=self.obs_norm.to_dict(), act_norm=self.act_norm.to_dict())

    @classmethod
    def from_hparams(cls, h: dict) -> "RewardModel":
        h = dict(h)
        h["obs_norm"] = Normalizer.from_dict(h["obs_norm"])
        h["act_norm"] = Normalizer.from_dict(h["act_norm"])
        return cls(**h)

    def raw(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Normalised output: regression target (learned) or negative denoising error (cost)."""
        sn = self.obs_norm.normalize(s)
        if self.kind == "learned":
            return self.net(torch.cat([sn, self.act_norm.normalize(a)], -1)).squeeze(-1)
        B, M = sn.shape[0], self.n_probe
        x0 = sn.repeat_interleave(M, 0)
        err = per_sample_denoising_error(self.net, self.schedule, x0, self.probe_t.repeat(B), self.probe_eps.repeat(B, 1))
        return -err.view(B, M).mean(-1)

    @torch.no_grad()
    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.raw(s, a) * self.r_std + self.r_mean


def train_reward(ds: Dataset, kind: str, steps: int, lr: float, batch_size: int, gen: torch.Generator,
                 obs_norm: Normalizer, act_norm: Normalizer, progress: bool = True, log=None, log_every: int = 100,
                 step_offset: int = 0) -> RewardModel:
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
    opt = torch.optim.Adam(rm.net.parameters(), lr=lr)
    bs = min(batch_size, len(S))
    it = batches(len(S), bs, gen)
    ema = None
    for step in tqdm(range(steps), desc=f"dydiff: reward model ({kind})", disable=not progress, mininterval=1.0):
        idx = next(it)
        if kind == "learned":
            loss = ((rm.raw(S[idx], A[idx]) - Y[idx]) ** 2).mean()
        else:
            loss = denoising_loss(rm.net, rm.schedule, obs_norm.normalize(S[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log.add(step_offset + step, reward_loss=ema)
    if kind == "cost":
        # express the cost in units of its spread on the demonstrations (mean 0, std 1 on the data)
        with torch.no_grad():
            c = rm.raw(S[: min(len(S), 4096)], torch.zeros(min(len(S), 4096), ds.act_dim))
        rm.r_std = 1.0 / float(max(c.std().item(), 1e-6))
        rm.r_mean = -float(c.mean().item()) * rm.r_std
    rm.eval()
    return rm


class TerminationModel(nn.Module):
    """p(episode ends in s) from the states at which recorded episodes ended before their time limit
    (a hopper that fell); without it, synthetic rollouts would carry on past a fall as if nothing
    happened and the offline learner would value falling states. Logit MLP on z-scored s: (B,)."""

    def __init__(self, obs_dim: int, hidden: int = 64, obs_norm: Optional[Normalizer] = None):
        super().__init__()
        self.obs_dim, self.hidden = obs_dim, hidden
        self.obs_norm = obs_norm or Normalizer.identity(obs_dim)
        self.net = mlp([obs_dim, hidden, hidden, 1], "mish")

    def hparams(self) -> dict:
        return dict(obs_dim=self.obs_dim, hidden=self.hidden, obs_norm=self.obs_norm.to_dict())

    @classmethod
    def from_hparams(cls, h: dict) -> "TerminationModel":
        return cls(h["obs_dim"], h["hidden"], Normalizer.from_dict(h["obs_norm"]))

    def logit(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs_norm.normalize(s)).squeeze(-1)

    @torch.no_grad()
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """(..., ds) -> (...) bool: terminal."""
        return self.logit(s.reshape(-1, self.obs_dim)).view(s.shape[:-1]) > 0


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
    opt = torch.optim.Adam(tm.net.parameters(), lr=lr, weight_decay=1e-4)
    half = max(1, batch_size // 2)
    y = torch.cat([torch.ones(half), torch.zeros(half)])
    for _ in range(steps):  # balanced batches: terminal states are rare
        x = torch.cat([P[torch.randint(0, len(P), (half,), generator=gen)],
                       N[torch.randint(0, len(N), (half,), generator=gen)]])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(tm.logit(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tm.eval()
    return tm


# ----------------------------------------------------------------------------------------- world model
class WorldModel:
    """The DyDiff world model: window diffusion + single-step ensemble + reward, with rollouts."""

    KIND = "dydiff"

    def __init__(self, net: ScoreNet, schedule: NoiseSchedule, ensemble: DynamicsEnsemble, reward: RewardModel,
                 obs_norm: Normalizer, act_norm: Normalizer, win_norm: Normalizer, H: int,
                 low: np.ndarray, high: np.ndarray, start_states: np.ndarray, state_lo: np.ndarray,
                 state_hi: np.ndarray, cfg: DyDiffConfig, meta: Optional[dict[str, Any]] = None,
                 termination: Optional[TerminationModel] = None, halt_threshold: Optional[float] = None):
        self.net, self.schedule, self.ensemble, self.reward = net.eval(), schedule, ensemble.eval(), reward.eval()
        # ensemble disagreement (z-scored state units) above which (s, a) is unknown; None: never
        self.halt_threshold = None if halt_threshold is None else float(halt_threshold)
        self.termination = termination.eval() if termination is not None else None
        self.obs_norm, self.act_norm, self.win_norm, self.H = obs_norm, act_norm, win_norm, int(H)
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.start_states = np.asarray(start_states, np.float32)
        self.state_lo, self.state_hi = np.asarray(state_lo, np.float32), np.asarray(state_hi, np.float32)
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.obs_dim, self.act_dim = obs_norm.dim, act_norm.dim

    # -------------------------------------------------------------- pieces
    def clip_action(self, a: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(a, torch.as_tensor(self.high)), torch.as_tensor(self.low))

    def in_support(self, s: torch.Tensor) -> torch.Tensor:
        """(..., ds) -> (...) bool: inside the data's range widened by ``support_margin`` stds."""
        return ((s >= torch.as_tensor(self.state_lo)) & (s <= torch.as_tensor(self.state_hi))).all(-1)

    def unknown(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(..., ds), (..., da) -> (...) bool: the ensemble disagrees on the next state more than it does
        anywhere in the data (times ``halt_disagreement``), so the model's prediction there is a guess
        (MOReL's unknown state-action detector)."""
        if self.halt_threshold is None:
            return torch.zeros(s.shape[:-1], dtype=torch.bool)
        lead = s.shape[:-1]
        d = self.ensemble.disagreement(s.reshape(-1, s.shape[-1]), a.reshape(-1, a.shape[-1]))
        return (d > self.halt_threshold).view(lead)

    def is_terminal(self, s: torch.Tensor) -> torch.Tensor:
        """(..., ds) -> (...) bool: the episode ends in s (learned termination, or out of support)."""
        out = ~self.in_support(s)
        if self.termination is not None:
            out = out | self.termination(s)
        return out

    def window_cond(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """s0 (B, ds), actions (B, H-1, da) -> conditioning vector (B, ds + (H-1) da)."""
        return torch.cat([self.obs_norm.normalize(s0), self.act_norm.normalize(actions).flatten(1)], -1)

    @torch.no_grad()
    def sample_window(self, s0: torch.Tensor, actions: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        """States of the window (B, H, ds) (row 0 is s0) sampled given s0 and a_0..a_{H-2} (B, H-1, da)."""
        B = s0.shape[0]
        eps_net = X0Parameterised(self.net, self.schedule) if self.cfg.predict == "x0" else self.net
        x = ddpm_sample(eps_net, self.schedule, (B, (self.H - 1) * self.obs_dim), self.window_cond(s0, actions),
                        generator=gen, device=torch.device("cpu"))
        off = self.win_norm.unnormalize(x).view(B, self.H - 1, self.obs_dim)
        return torch.cat([s0.unsqueeze(1), s0.unsqueeze(1) + off], 1)

    @torch.no_grad()
    def ensemble_rollout(self, s0: torch.Tensor, policy: Optional[PolicyFn] = None, actions: Optional[torch.Tensor] = None,
                         gen: Optional[torch.Generator] = None, member: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive single-step rollout over the window: states (B, H, ds), actions (B, H, da).

        Either ``policy`` chooses the actions or ``actions`` (B, H-1, da) are given (open loop)."""
        B, H = s0.shape[0], self.H
        S = torch.zeros(B, H, self.obs_dim)
        A = torch.zeros(B, H, self.act_dim)
        S[:, 0] = s0
        for i in range(H - 1):
            A[:, i] = self.clip_action(policy(S[:, i])) if actions is None else actions[:, i]
            m = "mean" if member == "mean" else torch.randint(0, self.ensemble.size, (B,), generator=gen)
            S[:, i + 1] = self.ensemble.step(S[:, i], A[:, i], m)
        if policy is not None:
            A[:, H - 1] = self.clip_action(policy(S[:, H - 1]))
        return S, A

    @torch.no_grad()
    def rollout(self, s0: torch.Tensor, policy: Optional[PolicyFn] = None, actions: Optional[torch.Tensor] = None,
                K: Optional[int] = None, gen: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Policy-injected DyDiff rollout from s0 (B, ds).

        With ``policy``: actions are relabelled a_i <- pi(s_i) after each refinement. With fixed
        ``actions`` (B, H-1, da) the same refinements run open loop (used to measure model error).
        Returns states (B, H, ds), actions (B, H, da), rewards (B, H-1), dones (B, H-1) (s_{i+1} terminal),
        alive (B, H-1) (no terminal state before step i and every (s, a) up to i known to the model,
        see ``unknown``), score (B,): summed reward while alive."""
        K = self.cfg.refinements if K is None else K
        S, A = self.ensemble_rollout(s0, policy, actions, gen)
        for _ in range(K):
            Sd = self.sample_window(s0, A[:, : self.H - 1], gen)
            S = torch.cat([S[:, :1], (1 - self.cfg.mix) * S[:, 1:] + self.cfg.mix * Sd[:, 1:]], 1)
            if policy is not None:
                A = self.clip_action(policy(S.flatten(0, 1))).view(A.shape)
        B = s0.shape[0]
        r = self.reward(S[:, :-1].flatten(0, 1), A[:, :-1].flatten(0, 1)).view(B, self.H - 1)
        done = self.is_terminal(S[:, 1:])
        alive = torch.cat([torch.ones_like(done[:, :1]), ~done[:, :-1]], 1).cumprod(1).bool()
        alive = alive & (~self.unknown(S[:, :-1], A[:, :-1])).cumprod(1).bool()  # cut where the model guesses
        score = (r * alive).sum(1)
        return {"states": S, "actions": A, "rewards": r, "dones": done, "alive": alive, "score": score,
                "valid": alive.any(1)}

    @torch.no_grad()
    def filtered_transitions(self, s0: torch.Tensor, policy: PolicyFn, gen: Optional[torch.Generator] = None
                             ) -> dict[str, torch.Tensor]:
        """Rollouts from s0, keep the best ``keep_fraction`` by score, flattened into transitions
        obs/act/reward/next_obs/done (M, .), each rollout cut after its first terminal state."""
        out = self.rollout(s0, policy, gen=gen)
        n_keep = max(1, int(round(self.cfg.keep_fraction * s0.shape[0])))
        order = torch.argsort(out["score"], descending=True)[:n_keep]
        S, A, R = out["states"][order], out["actions"][order], out["rewards"][order]
        m = out["alive"][order].flatten()  # transitions up to and including the first terminal one
        return {"obs": S[:, :-1].flatten(0, 1)[m], "act": A[:, :-1].flatten(0, 1)[m], "reward": R.flatten()[m],
                "next_obs": S[:, 1:].flatten(0, 1)[m], "done": out["dones"][order].flatten()[m].float(),
                "kept": torch.tensor(len(order))}

    # -------------------------------------------------------------- io
    def save(self, path: str | Path, extra_meta: Optional[dict[str, Any]] = None) -> Path:
        tensors = {**module_tensors("window", self.net), **module_tensors("ensemble", self.ensemble),
                   **module_tensors("reward", self.reward),
                   **(module_tensors("termination", self.termination) if self.termination is not None else {}),
                   "start_states": torch.as_tensor(self.start_states)}
        meta = {
            "kind": self.KIND, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "horizon": self.H,
            "window_net": self.net.hparams(), "T": self.schedule.T, "schedule": self.schedule.kind,
            "ensemble": self.ensemble.hparams(), "ensemble_norms": self.ensemble.norms(),
            "reward_model": self.reward.hparams(),
            "termination": self.termination.hparams() if self.termination is not None else None,
            "obs_norm": self.obs_norm.to_dict(), "act_norm": self.act_norm.to_dict(), "win_norm": self.win_norm.to_dict(),
            "action_low": self.low.tolist(), "action_high": self.high.tolist(),
            "state_lo": self.state_lo.tolist(), "state_hi": self.state_hi.tolist(), "halt_threshold": self.halt_threshold,
            "dydiff": dataclasses.asdict(self.cfg), **self.meta, **(extra_meta or {}),
        }
        return save_checkpoint(path, tensors, meta)

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> "WorldModel":
        m = ck.meta
        try:
            from smiling_ros.config import build

            cfg = build(DyDiffConfig, m["dydiff"], f"{ck.path}: dydiff")
            net = load_module(ck, "window", lambda: ScoreNet(**m["window_net"]), "window model")
            ens = load_module(ck, "ensemble", lambda: DynamicsEnsemble(**m["ensemble"]), "dynamics ensemble")
            ens.load_norms(m["ensemble_norms"])
            rew = load_module(ck, "reward", lambda: RewardModel.from_hparams(m["reward_model"]), "reward model")
            term = None
            if m.get("termination"):
                term = load_module(ck, "termination", lambda: TerminationModel.from_hparams(m["termination"]),
                                   "termination model")
            return cls(net, make_schedule(int(m["T"]), m["schedule"]), ens, rew, Normalizer.from_dict(m["obs_norm"]),
                       Normalizer.from_dict(m["act_norm"]), Normalizer.from_dict(m["win_norm"]), int(m["horizon"]),
                       np.asarray(m["action_low"]), np.asarray(m["action_high"]), ck.tensors["start_states"].numpy(),
                       np.asarray(m["state_lo"]), np.asarray(m["state_hi"]), cfg, {"task": m.get("task", "")}, term,
                       None if m.get("halt_threshold") is None else float(m["halt_threshold"]))
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise UserError(f"{ck.path}: inconsistent dydiff checkpoint ({str(exc).splitlines()[0]})") from None

    @classmethod
    def load(cls, path: str | Path, task: Optional[str] = None, obs_dim: Optional[int] = None,
             act_dim: Optional[int] = None) -> "WorldModel":
        ck = load_checkpoint(path).require(cls.KIND, obs_dim=obs_dim, act_dim=act_dim, task=task)
        return cls.from_checkpoint(ck)


def train_world_model(ds: Dataset, cfg: DyDiffConfig, low: np.ndarray, high: np.ndarray, *, seed: int = 0,
                      log_prefix: Optional[str | Path] = None, progress: bool = True,
                      meta: Optional[dict[str, Any]] = None, max_episode_steps: Optional[int] = None) -> WorldModel:
    """Fit the window model, the ensemble, the reward model and (when episodes shorter than
    ``max_episode_steps`` show terminations) a termination model on ``ds``; returns the world model."""
    t0 = time.time()
    S_win, A_win = windows(ds, cfg.horizon)  # validates actions and lengths first
    gen = seed_everything(seed)
    H = cfg.horizon
    log = TrainLog(log_prefix, ["window_loss", "ensemble_mse", "reward_loss"]) if log_prefix else None
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
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    it = batches(len(X), min(cfg.batch_size, len(X)), gen)
    ema = None
    bar = tqdm(range(cfg.steps), desc="dydiff: window diffusion", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = next(it)
        if cfg.predict == "x0":
            loss = x0_loss(net, sched, X[idx], C[idx], gen)
        else:
            loss = denoising_loss(net, sched, X[idx], C[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{ema:.4f}")
            if log is not None:
                log.add(step, window_loss=ema)
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
        log.close("DyDiff world model")
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
                  log_prefix: Optional[str | Path] = None, progress: bool = True,
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
    log = TrainLog(log_prefix, ["critic_loss", "actor_loss", "q", "bc", "synthetic", "kept"]) if log_prefix else None
    n_synth = int(round((1 - cfg.real_fraction) * tcfg.batch_size))
    all_states = torch.as_tensor(ds.obs)
    acc: dict[str, float] = {}
    n = 0
    bar = tqdm(range(steps), desc="offline learner (TD3+BC" + (" + DyDiff)" if synth is not None else ")"),
               disable=not progress, mininterval=1.0)
    kept = 0
    for step in bar:
        if synth is not None and step % cfg.rollout_every == 0:
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
                log.add(step + 1, **row)
            bar.set_postfix(q=f"{row.get('q', 0):.1f}", bc=f"{row.get('bc', 0):.3f}")
            acc, n = {}, 0
        if callback is not None:
            callback(step + 1, agent)
    if log is not None:
        log.close("TD3+BC" + (" + DyDiff rollouts" if synth is not None else ""))
    return agent
