"""Single-step dynamics ensemble: E small MLPs predicting the state change s' - s.

Inputs are z-scored [s, a]; the target is the z-scored delta (s' - s). Members differ by their
initialisation and by bootstrap resampling of the training transitions, so their disagreement
indicates where the data are thin. Shapes: s (B, ds), a (B, da) in robot units.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.learn.fit import Fit, Optim
from smiling_ros.learn.logger import RunLogger
from smiling_ros.learn.nets import mlp


class DynamicsEnsemble(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, size: int = 5, hidden: int = 200, layers: int = 3,
                 obs_norm: Optional[Normalizer] = None, act_norm: Optional[Normalizer] = None,
                 delta_norm: Optional[Normalizer] = None):
        super().__init__()
        self.obs_dim, self.act_dim, self.size, self.hidden, self.layers = obs_dim, act_dim, size, hidden, layers
        self.members = nn.ModuleList(
            mlp([obs_dim + act_dim] + [hidden] * layers + [obs_dim], "mish") for _ in range(size))
        self.obs_norm = obs_norm or Normalizer.identity(obs_dim)
        self.act_norm = act_norm or Normalizer.identity(act_dim)
        self.delta_norm = delta_norm or Normalizer.identity(obs_dim)

    def hparams(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, size=self.size, hidden=self.hidden, layers=self.layers)

    def norms(self) -> dict:
        return {"obs": self.obs_norm.to_dict(), "act": self.act_norm.to_dict(), "delta": self.delta_norm.to_dict()}

    def load_norms(self, d: dict) -> None:
        self.obs_norm = Normalizer.from_dict(d["obs"])
        self.act_norm = Normalizer.from_dict(d["act"])
        self.delta_norm = Normalizer.from_dict(d["delta"])

    def _inputs(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.obs_norm.normalize(s), self.act_norm.normalize(a)], -1)

    def all_members(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Next-state predictions of every member: (E, B, ds), robot units."""
        x = self._inputs(s, a)
        d = torch.stack([m(x) for m in self.members])
        return s.unsqueeze(0) + self.delta_norm.unnormalize(d)

    @torch.no_grad()
    def step(self, s: torch.Tensor, a: torch.Tensor, member: str | torch.Tensor = "mean") -> torch.Tensor:
        """Next state (B, ds). ``member``: 'mean' over members, or (B,) long member indices."""
        preds = self.all_members(s, a)
        if isinstance(member, str):
            return preds.mean(0)
        return preds[member, torch.arange(s.shape[0])]

    @torch.no_grad()
    def disagreement(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Largest per-dimension std across members, in z-scored state units: (B,)."""
        preds = self.obs_norm.normalize(self.all_members(s, a))
        return preds.std(0).max(-1).values


def train_ensemble(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, size: int, hidden: int, layers: int,
                   steps: int, lr: float, batch_size: int, gen: torch.Generator, progress: bool = True,
                   log: Optional[RunLogger] = None, log_every: int = 100, step_offset: int = 0) -> DynamicsEnsemble:
    """Fit the ensemble on transitions (N, ds), (N, da), (N, ds) by MSE on z-scored deltas."""
    obs_norm, act_norm = Normalizer.fit(obs), Normalizer.fit(act)
    delta_norm = Normalizer.fit(next_obs - obs)
    ens = DynamicsEnsemble(obs.shape[1], act.shape[1], size, hidden, layers, obs_norm, act_norm, delta_norm)
    X = ens._inputs(torch.as_tensor(obs), torch.as_tensor(act))
    Y = torch.as_tensor(delta_norm.normalize(next_obs - obs))
    n = len(X)
    boot = torch.randint(0, n, (size, n), generator=gen)  # bootstrap sample of each member
    bs = min(batch_size, n)

    def compute_loss(idx: torch.Tensor) -> torch.Tensor:  # idx (E, bs): each member's own bootstrap rows
        return sum(((m(X[i]) - Y[i]) ** 2).mean() for m, i in zip(ens.members, idx)) / size  # type: ignore[return-value]

    Fit(ens, compute_loss, Optim(lr, weight_decay=1e-5), steps, name="dydiff: dynamics ensemble", logger=log,
        rename={"loss": "ensemble_mse"}, log_every=log_every, progress=progress, step_offset=step_offset).run(
        lambda: boot[:, torch.randint(0, n, (bs,), generator=gen)])
    ens.eval()
    return ens
