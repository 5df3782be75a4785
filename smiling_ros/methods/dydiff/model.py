"""DyDiff's model: the window diffusion (conditioned on s0 and the actions, x0-parameterised), the
reward and termination models, and :class:`WorldModel` with its policy-injected rollouts. Training
is in :mod:`smiling_ros.methods.dydiff.train`; the method is described there."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import Checkpoint, load_checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, ddpm_sample, make_schedule, per_sample_denoising_error
from smiling_ros.learn.nets import mlp
from smiling_ros.methods.dydiff.config import DyDiffConfig
from smiling_ros.methods.dydiff.ensemble import DynamicsEnsemble


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


    probe_t: torch.Tensor
    probe_eps: torch.Tensor
    def __init__(self, kind: str, obs_dim: int, act_dim: int, hidden: int = 256, T: int = 100, n_probe: int = 16,
                 obs_norm: Optional[Normalizer] = None, act_norm: Optional[Normalizer] = None,
                 r_mean: float = 0.0, r_std: float = 1.0):
        super().__init__()
        self.kind, self.obs_dim, self.act_dim, self.hidden, self.T, self.n_probe = kind, obs_dim, act_dim, hidden, T, n_probe
        self.obs_norm = obs_norm or Normalizer.identity(obs_dim)
        self.act_norm = act_norm or Normalizer.identity(act_dim)
        self.r_mean, self.r_std = float(r_mean), float(r_std)
        self.net: nn.Module
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
            if actions is not None:
                A[:, i] = actions[:, i]
            elif policy is not None:
                A[:, i] = self.clip_action(policy(S[:, i]))
            else:
                raise ValueError("ensemble_rollout: give a policy or the actions")
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
