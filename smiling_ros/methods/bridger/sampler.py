"""BRIDGER sampler: Euler-Maruyama from the source action (t ~ 0) to the expert action (t ~ 1).

The SDE (Albergo, Boffi & Vanden-Eijnden's stochastic interpolants; used by BRIDGER):

    dX = [b(t, X) + eps(t) score(t, X)] dt + sqrt(2 eps(t)) dW,    X(0) = x0 ~ source(o)

with score = -s / gamma (s the denoiser, s ~ E[z | x_t]) and b the drift of the ODE,
obtained from the velocity by the standard identity

    b = E[dI/dt + gamma' z | x_t] = v + gamma' s = v - gamma' gamma score.

(The public BRIDGER code multiplied the gamma' gamma score term by an extra eps(t) factor,
which changes the transported marginals unless eps = 1; here the identity is used as is.)

One Euler-Maruyama step of length dt is therefore

    x <- x + dt v + dt (gamma'(t) - eps(t) / gamma(t)) s + sqrt(2 eps(t) dt) xi,   xi ~ N(0, I)

(The public code scaled the Wiener increment by dt instead of sqrt(dt), which shrinks the
injected noise by sqrt(dt) and breaks the SDE's marginals; here it is sqrt(dt).) eps = 0
gives the ODE (no noise). eps is in units of d^2 (see interpolants.py).

Time grid (``clock``):
  ``t``   N equal steps of t over [t_min, 1 - t_min].
  ``w1``  N equal steps of the interpolant's own clock tau = w1(t) (linear, power3, power4):
          Euler-Maruyama on the time-changed SDE in tau, i.e. step length dt_k =
          (tau_{k+1} - tau_k) / w1'(t_k). The mean path x0 -> x1 is a straight segment
          traversed uniformly in tau, so a source already near the expert action is moved
          exactly along it even with 1 or 2 steps; for power3 with equal t steps, one Euler
          step would move 3 times too far (w1'(0) = 3). For linear, ``w1`` equals ``t``.
          In tau the SDE's coefficients grow like 1 / w1'(t) near t = 1, where the noise terms
          live: with a large noise scale (d ~ 1) Euler-Maruyama then converges slowly in N.
  ``auto`` ``w1`` where the interpolant has that clock and d <= 0.3 (the mean path dominates),
          else ``t``.
The last step adds no noise by default (the t = 1 marginal has gamma(1) = 0; noise injected in
the final step would stay in the action); ``final_noise=True`` keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from smiling_ros.errors import UserError
from smiling_ros.methods.bridger.interpolants import Interpolant

CLOCKS = ("auto", "t", "w1")
AUTO_W1_MAX_NOISE = 0.3


@dataclass
class Grid:
    """Per-step coefficients: x <- x + a[k] v + c[k] s + sigma[k] xi, evaluated at t[k]."""

    t: np.ndarray  # (N,) float32 evaluation times
    a: np.ndarray  # (N,) step length dt_k (multiplies v)
    c: np.ndarray  # (N,) dt_k (gamma'(t_k) - eps(t_k) / gamma(t_k)) (multiplies s)
    sigma: np.ndarray  # (N,) sqrt(2 eps(t_k) dt_k)

    @property
    def steps(self) -> int:
        return int(len(self.t))


def make_grid(interp: Interpolant, steps: int, clock: str = "auto", final_noise: bool = False) -> Grid:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise UserError(f"bridger.steps: must be an integer >= 1, got {steps!r}")
    if clock not in CLOCKS:
        raise UserError(f"bridger.clock: '{clock}' is not one of {', '.join(CLOCKS)}")
    if clock == "auto":
        clock = "w1" if interp.monotone and interp.noise_scale <= AUTO_W1_MAX_NOISE else "t"
    if clock == "w1" and not interp.monotone:
        raise UserError(f"bridger.clock: 'w1' needs a monotone interpolant (linear, power3, power4), not {interp.kind}")
    lo, hi = interp.t_min, 1.0 - interp.t_min
    if clock == "t":
        edges = np.linspace(lo, hi, steps + 1, dtype=np.float64)
        t = edges[:-1]
        dt = np.diff(edges)
    else:
        tau = np.linspace(interp.w(lo)[1], interp.w(hi)[1], steps + 1, dtype=np.float64)
        t = np.clip(interp.w1_inverse(tau[:-1]), lo, hi)
        dt = np.diff(tau) / interp.dw(t)[1]
    gamma, dgamma, eps = interp.gamma(t), interp.dgamma(t), interp.eps_coef(t)
    c = dt * (dgamma - eps / gamma)
    sigma = np.sqrt(2.0 * eps * dt)
    if not final_noise:
        sigma[-1] = 0.0
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Grid(f32(t), f32(dt), f32(c), f32(sigma))


@torch.no_grad()
def sample_torch(net, grid: Grid, x0: torch.Tensor, cond: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Batched sampling. x0: (B, X) normalised source actions; cond: (B, C). Returns (B, X)."""
    x = x0.clone()
    B = x.shape[0]
    for k in range(grid.steps):
        t = torch.full((B,), float(grid.t[k]), device=x.device)
        v, s = net(x, t, cond)
        x = x + float(grid.a[k]) * v + float(grid.c[k]) * s
        if grid.sigma[k] > 0:
            x = x + float(grid.sigma[k]) * torch.randn(x.shape, generator=generator, device=x.device)
    return x


def sample_numpy(fwd, time_bias: np.ndarray, grid: Grid, x0: np.ndarray, cond_bias: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Single-observation sampling with :class:`~smiling_ros.methods.bridger.nets.NumpyForward`.

    x0: (X,) normalised source action; cond_bias: fwd.cond_bias(cond); time_bias:
    fwd.time_bias(grid.t). Returns (X,)."""
    x = np.array(x0, np.float32)
    noise = rng.standard_normal((grid.steps, x.shape[-1]), dtype=np.float32) if grid.sigma.any() else None
    for k in range(grid.steps):
        v, s = fwd.step(x, cond_bias + time_bias[k])
        x = x + grid.a[k] * v + grid.c[k] * s
        if noise is not None and grid.sigma[k] > 0:
            x = x + grid.sigma[k] * noise[k]
    return x
