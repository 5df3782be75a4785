"""BRIDGER networks: one MLP trunk with two heads, velocity v and denoiser s.

    [x_t (X,), time embedding (time_dim,), observation window (C,)] -> MLP -> [v (X,), s (X,)]

X = act_dim * chunk (normalised actions), C = obs_dim * window (normalised observations).
v(x, t, o) regresses dI/dt and s(x, t, o) regresses the noise z (so s ~ E[z | x_t, o] and the
score is -s / gamma). One trunk for both heads halves the cost per sampling step.

The time embedding is :class:`smiling_ros.learn.diffusion.TimeEmbedding` of ``1000 t`` (t in [0, 1]).

Activations come from :mod:`smiling_ros.learn.nets`; EMA weights from the fit loop
(:mod:`smiling_ros.learn.fit`). :class:`NumpyForward` evaluates the same net with numpy for a single observation, with the
observation's and each grid time's contributions to the first layer computed once per action
and once per grid respectively: at batch size 1 this avoids most of torch's per-op overhead.
"""
from __future__ import annotations

import typing
from typing import Sequence

import numpy as np
import torch
from torch import nn

from smiling_ros.errors import UserError
from smiling_ros.learn.diffusion import TimeEmbedding
from smiling_ros.learn.nets import check_activation as _check_activation
from smiling_ros.learn.nets import mlp, np_activation

TIME_SCALE = 1000.0  # t in [0, 1] -> TimeEmbedding's integer-timestep range


def check_activation(name: str, where: str = "bridger.activation") -> None:
    _check_activation(name, where)


class BridgerNet(nn.Module):
    """v and s heads on one MLP trunk. forward(x (B, X), t (B,), cond (B, C)) -> (v, s)."""

    def __init__(self, x_dim: int, cond_dim: int, hidden: Sequence[int] = (256, 256, 256),
                 activation: str = "silu", time_dim: int = 16):
        super().__init__()
        check_activation(activation)
        if not hidden:
            raise UserError("bridger.hidden: needs at least one hidden layer")
        self.x_dim, self.cond_dim, self.hidden = int(x_dim), int(cond_dim), [int(h) for h in hidden]
        self.activation, self.time_dim = activation, int(time_dim)
        self.time = TimeEmbedding(self.time_dim, 2 * self.time_dim)
        self.trunk = mlp([self.x_dim + self.time_dim + self.cond_dim] + self.hidden, activation, final_activation=True)
        self.head = nn.Linear(self.hidden[-1], 2 * self.x_dim)

    def hparams(self) -> dict:
        return dict(x_dim=self.x_dim, cond_dim=self.cond_dim, hidden=self.hidden, activation=self.activation,
                    time_dim=self.time_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(torch.cat([x, self.time(t * TIME_SCALE), cond], dim=-1))
        out = self.head(h)
        return out[..., : self.x_dim], out[..., self.x_dim:]


class NumpyMLP:
    """numpy forward of an nn.Sequential of Linear + activation layers (any batch shape)."""

    def __init__(self, seq: nn.Sequential, activation: str):
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for m in seq:
            if isinstance(m, nn.Linear):
                self.layers.append((m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()))
        self.act = np_activation(activation)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(self.layers)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < n - 1:
                x = self.act(x)
        return x


class NumpyForward:
    """numpy evaluation of a :class:`BridgerNet` for one observation.

    ``cond_bias(cond)`` once per action, ``time_bias(t_grid)`` once per sampling grid; then
    ``step(x, cb + tb[k])`` per step returns (v, s).
    """

    def __init__(self, net: BridgerNet):
        self.net = net
        lin0 = typing.cast(nn.Linear, net.trunk[0])
        w0 = lin0.weight.detach().cpu().numpy().astype(np.float32)  # (H, X + T + C)
        X, T = net.x_dim, net.time_dim
        self.wx = w0[:, :X].T.copy()  # (X, H)
        self.wt = w0[:, X:X + T].T.copy()
        self.wc = w0[:, X + T:].T.copy()  # (C, H)
        self.b0 = lin0.bias.detach().cpu().numpy().astype(np.float32)
        self.hidden = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
                       for m in list(net.trunk)[2::2] if isinstance(m, nn.Linear)]
        self.wh = net.head.weight.detach().cpu().numpy().T.copy()
        self.bh = net.head.bias.detach().cpu().numpy().copy()
        self.act = np_activation(net.activation)
        self.x_dim = X

    @torch.no_grad()
    def time_bias(self, t: np.ndarray) -> np.ndarray:
        """(K,) grid times -> (K, H) first-layer contribution of the time embedding (+ bias)."""
        emb = self.net.time(torch.as_tensor(np.asarray(t, np.float32) * TIME_SCALE)).cpu().numpy()
        return emb @ self.wt + self.b0

    def cond_bias(self, cond: np.ndarray) -> np.ndarray:
        return cond @ self.wc

    def step(self, x: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        act = self.act
        h = act(x @ self.wx + bias)
        for w, b in self.hidden:
            h = act(h @ w + b)
        out = h @ self.wh + self.bh
        return out[..., : self.x_dim], out[..., self.x_dim:]


def build_net(hp: dict) -> BridgerNet:
    return BridgerNet(int(hp["x_dim"]), int(hp["cond_dim"]), list(hp["hidden"]), str(hp["activation"]),
                      int(hp.get("time_dim", 16)))


def velocity_loss(v: torch.Tensor, dI: torch.Tensor) -> torch.Tensor:
    """Per sample L_v = 1/2 |v|^2 - dI/dt . v  (B,); minimised by v = E[dI/dt | x_t, o]."""
    return 0.5 * (v * v).sum(-1) - (dI * v).sum(-1)


def denoiser_loss(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per sample L_s = 1/2 |s|^2 - z . s  (B,); minimised by s = E[z | x_t, o]."""
    return 0.5 * (s * s).sum(-1) - (z * s).sum(-1)

