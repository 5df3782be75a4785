"""DBC's model and loss: the frozen joint diffusion model of expert (s, a) pairs and the stage-2 loss
L = L_BC + lambda * L_DM (see :mod:`smiling_ros.methods.dbc.train` for the method)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import load_checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, per_sample_denoising_error
from smiling_ros.learn.policy import MlpPolicy
from smiling_ros.methods.dbc.config import DBCConfig


@dataclass
class JointDiffusion:
    """The frozen stage-1 model: eps_phi over z-scored [s, a]."""

    net: ScoreNet
    schedule: NoiseSchedule
    norm: Normalizer  # over the concatenation [s, a], (obs_dim + act_dim,)
    obs_dim: int
    act_dim: int

    def save(self, path: str | Path, meta: Optional[dict[str, Any]] = None) -> Path:
        m = {
            "kind": "dbc_diffusion", "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "net": self.net.hparams(), "T": self.schedule.T, "schedule": self.schedule.kind,
            "norm": self.norm.to_dict(), **(meta or {}),
        }
        return save_checkpoint(path, module_tensors("net", self.net), m)

    @classmethod
    def load(cls, path: str | Path, obs_dim: int, act_dim: int) -> "JointDiffusion":
        ck = load_checkpoint(path).require("dbc_diffusion", obs_dim=obs_dim, act_dim=act_dim)
        m = ck.meta
        try:
            net = load_module(ck, "net", lambda: ScoreNet(**m["net"]), "dbc diffusion net")
            return cls(net, NoiseSchedule(int(m["T"]), m["schedule"]), Normalizer.from_dict(m["norm"]), obs_dim, act_dim)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise UserError(f"{path}: inconsistent dbc_diffusion checkpoint ({str(exc).splitlines()[0]})") from None


def dbc_losses(
    policy: MlpPolicy, dm: Optional[JointDiffusion], s: torch.Tensor, a: torch.Tensor, act_norm: Normalizer,
    cfg: DBCConfig, gen: Optional[torch.Generator] = None,
) -> dict[str, torch.Tensor]:
    """The stage-2 loss terms for one batch. s (B, ds), a (B, da) robot units.

    Returns ``loss`` (differentiable w.r.t. the policy), ``bc``, ``agent``, ``expert``, ``dm``."""
    a_pi = policy.forward(s)
    bc = ((act_norm.normalize(a_pi) - act_norm.normalize(a)) ** 2).mean()
    out = {"bc": bc}
    if dm is None or cfg.lambda_dm == 0:
        out.update(loss=bc, agent=torch.zeros(()), expert=torch.zeros(()), dm=torch.zeros(()))
        return out
    if cfg.state_noise > 0:  # both terms at the jittered state: pi's action there vs the recorded one
        s = s + cfg.state_noise * torch.as_tensor(dm.norm.std[: s.shape[1]], dtype=s.dtype) * torch.randn(
            s.shape, generator=gen)
        a_pi = policy.forward(s)
    x_agent = dm.norm.normalize(torch.cat([s, a_pi], 1))
    x_expert = dm.norm.normalize(torch.cat([s, a], 1))
    # One draw of (t, eps) shared by the agent and the expert term: their difference then measures
    # only how much worse pi's action denoises than the expert's, not sampling noise.
    t = torch.randint(0, dm.schedule.T, (s.shape[0],), generator=gen)
    eps = torch.randn(x_agent.shape, generator=gen)
    agent = per_sample_denoising_error(dm.net, dm.schedule, x_agent, t, eps).mean()
    with torch.no_grad():
        expert = per_sample_denoising_error(dm.net, dm.schedule, x_expert, t, eps).mean()
    ldm = (agent - expert).clamp(min=0) if cfg.normalize_dm else agent
    out.update(loss=bc + cfg.lambda_dm * ldm, agent=agent.detach(), expert=expert, dm=ldm.detach())
    return out
