"""Stochastic interpolants between a source action x0 and an expert action x1.

    x_t = I(t, x0, x1) + gamma(t) z,   I = w0(t) x0 + w1(t) x1,   z ~ N(0, I),   t in [0, 1]

All quantities live in the normalised action space (z-scored actions). ``gamma`` includes the
noise scale d: gamma(t) = d * sqrt(2 t (1 - t)), so gamma(0) = gamma(1) = 0 and x_0 = x0,
x_1 = x1 exactly.

Interpolant kinds (w0, w1):
  linear         (1 - t, t)
  power3         ((1 - t)^3, 1 - (1 - t)^3)      default
  power4         ((1 - t)^4, 1 - (1 - t)^4)
  encode_decode  (cos^2(pi t) [t < 1/2], cos^2(pi t) [t >= 1/2]): passes through pure noise
                 gamma(1/2) z at t = 1/2 (use a noise scale near 1 for it to be a real latent)

Diffusion coefficient of the sampling SDE, ``eps(t)``, options ``1-t`` (default), ``t(1-t)``
and ``0`` (ODE). eps is expressed in units of the interpolant's noise variance d^2: the SDE
uses d^2 * eps(t). With eps in absolute units and d = 0.03 the score term eps * score has
stiffness eps / gamma^2 ~ 1 / (2 d^2 t) ~ 500 / t per unit time, and Euler-Maruyama with a
handful of steps diverges; in units of d^2 the stiffness is eps~ / (2 t (1 - t)), O(1) away
from t = 0. Any eps >= 0 leaves the marginals of x_t unchanged, so this is a choice of
member of the same family of SDEs, not an approximation.

Every function accepts floats, numpy arrays or torch tensors for ``t``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smiling_ros.errors import UserError

KINDS = ("linear", "power3", "power4", "encode_decode")
EPS_KINDS = ("1-t", "t(1-t)", "0")
T_MIN = 1e-3  # t is kept in [T_MIN, 1 - T_MIN] where gamma'(t) and 1/gamma(t) are finite


def _lib(t: Any):
    return torch if isinstance(t, torch.Tensor) else np


@dataclass(frozen=True)
class Interpolant:
    """One interpolant: weights, their time derivatives, gamma, gamma' and eps.

    kind: one of KINDS. noise_scale: d. eps: one of EPS_KINDS (units of d^2, see module doc).
    """

    kind: str = "power3"
    noise_scale: float = 0.03
    eps: str = "1-t"
    t_min: float = T_MIN

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"bridger.interpolant: '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.eps not in EPS_KINDS:
            raise UserError(f"bridger.eps: '{self.eps}' is not one of {', '.join(EPS_KINDS)}")
        if not (self.noise_scale > 0 and math.isfinite(self.noise_scale)):
            raise UserError(f"bridger.noise_scale: must be > 0, got {self.noise_scale}")
        if not 0 < self.t_min < 0.5:
            raise UserError(f"bridger: t_min must lie in (0, 0.5), got {self.t_min}")

    # ------------------------------------------------------------------ weights
    def w(self, t):
        """(w0(t), w1(t))."""
        if self.kind == "linear":
            return 1 - t, t
        if self.kind in ("power3", "power4"):
            p = 3 if self.kind == "power3" else 4
            a = (1 - t) ** p
            return a, 1 - a
        lib = _lib(t)
        c2 = lib.cos(math.pi * t) ** 2
        first = t < 0.5
        return c2 * first, c2 * (~first if lib is torch else np.logical_not(first))

    def dw(self, t):
        """(w0'(t), w1'(t))."""
        if self.kind == "linear":
            one = t * 0 + 1
            return -one, one
        if self.kind in ("power3", "power4"):
            p = 3 if self.kind == "power3" else 4
            d = p * (1 - t) ** (p - 1)
            return -d, d
        lib = _lib(t)
        dc2 = -math.pi * lib.sin(2 * math.pi * t)
        first = t < 0.5
        return dc2 * first, dc2 * (~first if lib is torch else np.logical_not(first))

    # ------------------------------------------------------------------ noise
    def gamma(self, t):
        """d * sqrt(2 t (1 - t))."""
        return self.noise_scale * _lib(t).sqrt(2 * t * (1 - t))

    def dgamma(self, t):
        """gamma'(t) = d (1 - 2t) / sqrt(2 t (1 - t)); finite on [t_min, 1 - t_min]."""
        return self.noise_scale * (1 - 2 * t) / _lib(t).sqrt(2 * t * (1 - t))

    def eps_coef(self, t):
        """SDE diffusion coefficient d^2 * eps(t) (absolute units)."""
        if self.eps == "1-t":
            e = 1 - t
        elif self.eps == "t(1-t)":
            e = t * (1 - t)
        else:
            e = t * 0
        return self.noise_scale ** 2 * e

    # ------------------------------------------------------------------ paths
    def clip(self, t):
        return t.clamp(self.t_min, 1 - self.t_min) if isinstance(t, torch.Tensor) else np.clip(t, self.t_min, 1 - self.t_min)

    def mean(self, x0, x1, t):
        """I(t, x0, x1). x0, x1: (B, A); t: (B,) or (B, 1)."""
        t = _col(t)
        w0, w1 = self.w(t)
        return w0 * x0 + w1 * x1

    def dmean(self, x0, x1, t):
        """dI/dt. Shapes as :meth:`mean`."""
        t = _col(t)
        d0, d1 = self.dw(t)
        return d0 * x0 + d1 * x1

    def interpolate(self, x0, x1, t, z):
        """x_t = I(t, x0, x1) + gamma(t) z."""
        return self.mean(x0, x1, t) + self.gamma(_col(t)) * z

    # ------------------------------------------------------------------ the w1 clock
    @property
    def monotone(self) -> bool:
        """True when w0 = 1 - w1 with w1 increasing: the path is a straight segment x0 -> x1
        traversed at speed w1'(t), and tau = w1(t) is a clock in which it is uniform."""
        return self.kind in ("linear", "power3", "power4")

    def w1_inverse(self, tau):
        """t with w1(t) = tau (monotone kinds only)."""
        if self.kind == "linear":
            return tau
        if self.kind in ("power3", "power4"):
            p = 3 if self.kind == "power3" else 4
            return 1 - (1 - tau) ** (1.0 / p)
        raise ValueError("encode_decode has no w1 clock")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "noise_scale": self.noise_scale, "eps": self.eps, "t_min": self.t_min}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interpolant":
        return cls(str(d["kind"]), float(d["noise_scale"]), str(d["eps"]), float(d.get("t_min", T_MIN)))


def _col(t):
    """(B,) -> (B, 1) so weights broadcast over action dimensions; scalars pass through."""
    if isinstance(t, (torch.Tensor, np.ndarray)) and t.ndim == 1:
        return t[:, None]
    return t
