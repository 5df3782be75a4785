"""Diffusion core shared by every method: noise schedules, timestep embedding, the
noise-prediction MLP, the denoising loss and DDPM ancestral sampling.

Conventions: integer timesteps t in [0, T); ``abar[t]`` is the cumulative product of
``1 - beta``; the forward process is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from smiling_ros.errors import UserError
from smiling_ros.learn.nets import mlp


class NoiseSchedule(nn.Module):
    """DDPM schedule. ``kind``: 'linear' (beta_start..beta_end) or 'cosine' (Nichol & Dhariwal)."""

    betas: torch.Tensor
    abar: torch.Tensor

    def __init__(self, T: int = 1000, kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if not 1 <= T <= 1_000_000:
            raise UserError(f"diffusion: T must be in [1, 1000000], got {T}")
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif kind == "cosine":
            s = 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise UserError(f"diffusion: schedule must be 'linear' or 'cosine', got '{kind}'")
        self.T, self.kind = T, kind
        abar = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("abar", abar.float(), persistent=False)

    def informative_timesteps(self, min_abar: float = 1e-3) -> int:
        """Number of leading timesteps whose signal weight abar_t stays above ``min_abar``:
        beyond that x_t is indistinguishable from pure noise and carries no signal."""
        return int((self.abar > min_abar).sum().item())

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion. x0, eps: (B, D); t: (B,) long."""
        a = self.abar[t].unsqueeze(-1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def make_schedule(T: int, kind: str = "linear", beta_start: Optional[float] = None,
                  beta_end: Optional[float] = None) -> NoiseSchedule:
    """The one schedule factory. ``linear`` with no betas given scales DDPM's (1e-4 .. 0.02 at T = 1000)
    by 1000/T, so that a short chain still ends in pure noise (abar_T ~ 1e-5); given betas are used as
    they are. ``cosine`` is :class:`NoiseSchedule`'s, whose last beta is clamped to 0.999 and so divides
    the final step by sqrt(1e-3), amplifying any error of the last noise prediction ~30-fold when
    sampling without x0 clipping."""
    if kind == "linear":
        if beta_start is None or beta_end is None:
            return NoiseSchedule(T, "linear", 1e-4 * 1000 / T, min(0.02 * 1000 / T, 0.5))
        return NoiseSchedule(T, "linear", beta_start, beta_end)
    return NoiseSchedule(T, kind)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of (integer or real) timesteps followed by a small MLP."""

    def __init__(self, dim: int = 16, hidden: int = 32):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Mish(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
        args = t.float().unsqueeze(-1) * freqs
        return self.mlp(torch.cat([args.sin(), args.cos()], dim=-1))


class ScoreNet(nn.Module):
    """Noise-prediction network eps(x_t, t [, cond]) -> (B, x_dim).

    Input is [x_t, time embedding, cond] into an MLP of ``layers`` hidden layers of width
    ``hidden`` with LeakyReLU (SMILING's official net is one hidden layer of 256).
    """

    def __init__(self, x_dim: int, cond_dim: int = 0, hidden: int = 256, layers: int = 1, time_dim: int = 16):
        super().__init__()
        if not 0 <= layers <= 1000:
            raise ValueError(f"ScoreNet: {layers} layers is not a plausible network")
        self.x_dim, self.cond_dim, self.hidden, self.layers, self.time_dim = x_dim, cond_dim, hidden, layers, time_dim
        self.time = TimeEmbedding(time_dim, 2 * time_dim)
        self.mlp = mlp([x_dim + time_dim + cond_dim] + [hidden] * layers + [x_dim], "leaky_relu")

    def hparams(self) -> dict:
        return dict(x_dim=self.x_dim, cond_dim=self.cond_dim, hidden=self.hidden, layers=self.layers, time_dim=self.time_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [x, self.time(t)]
        if self.cond_dim:
            if cond is None:
                raise ValueError("ScoreNet: conditioning input required")
            parts.append(cond)
        return self.mlp(torch.cat(parts, dim=-1))


def per_sample_denoising_error(
    net: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
    cond: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """mean_d (eps_net(x_t, t) - eps)^2 for each row: (B,). Gradients flow to net and x0."""
    xt = schedule.q_sample(x0, t, eps)
    pred = net(xt, t, cond) if cond is not None else net(xt, t)
    return ((pred - eps) ** 2).mean(-1)


def denoising_loss(
    net: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, cond: Optional[torch.Tensor] = None,
    t_max: Optional[int] = None,
) -> torch.Tensor:
    """Standard DDPM loss E_{t, eps} ||eps_net(x_t, t) - eps||^2 (mean over dims and batch).
    ``t_max`` restricts training to the informative timesteps [0, t_max)."""
    T = schedule.T if t_max is None else t_max
    t = torch.randint(0, T, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    return per_sample_denoising_error(net, schedule, x0, t, eps, cond).mean()


@torch.no_grad()
def ddpm_sample(
    net: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], cond: Optional[torch.Tensor] = None,
    inpaint: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None, generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling from x_T ~ N(0, I).

    ``inpaint(x, t)`` (optional) returns x with known entries overwritten by their noised
    values at level t (used to clamp conditioning parts such as s0 and actions)."""
    device = device or schedule.abar.device
    x = torch.randn(shape, generator=generator, device=device)
    betas, abar = schedule.betas, schedule.abar
    for t in range(schedule.T - 1, -1, -1):
        if inpaint is not None:
            x = inpaint(x, t)
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        eps = net(x, tt, cond) if cond is not None else net(x, tt)
        a_t, ab_t = 1 - betas[t], abar[t]
        mean = (x - betas[t] / (1 - ab_t).sqrt() * eps) / a_t.sqrt()
        if t > 0:
            var = betas[t] * (1 - abar[t - 1]) / (1 - ab_t)
            x = mean + var.sqrt() * torch.randn(shape, generator=generator, device=device)
        else:
            x = mean
    if inpaint is not None:
        x = inpaint(x, -1)
    return x
